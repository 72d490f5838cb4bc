"use strict";
// The image question page: a conversation with an OpenAI-compatible model through the gateway.
// Images are scaled down here to the API's pixel limit before upload; answers stream in over
// fetch + SSE and are rendered as markdown by building DOM nodes (text is never parsed as HTML).

const settings = JSON.parse(document.getElementById("settings").textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, className) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
};

const ui = {
  conversation: $("conversation"), form: $("ask"), question: $("question"), send: $("send"), stop: $("stop"),
  drop: $("drop"), dropHelp: $("drop-help"), preview: $("preview"), file: $("file"), clearImage: $("clear-image"),
  keyRow: $("key-row"), key: $("api-key"), model: $("model"), notice: $("notice"),
};
const state = { image: null, history: [], controller: null, waitUntil: 0, countdown: null };

// The API key: kept for this tab only.
ui.key.value = sessionStorage.getItem("infergate-api-key") || "";
ui.keyRow.hidden = !settings.key_required;
ui.key.addEventListener("change", () => {
  sessionStorage.setItem("infergate-api-key", ui.key.value);
  loadModels();
});

function requestHeaders() {
  const headers = { "content-type": "application/json" };
  if (ui.key.value) headers.authorization = "Bearer " + ui.key.value;
  return headers;
}

function notice(text) {
  if (text === null) return;
  ui.notice.textContent = text || "";
  ui.notice.hidden = !text;
}

async function loadModels() {
  let response;
  try {
    response = await fetch(settings.api + "/models", { headers: requestHeaders() });
  } catch (error) {
    notice("The gateway cannot be reached.");
    return;
  }
  if (response.status === 401) {
    ui.keyRow.hidden = false;
    notice("This gateway needs a valid API key: enter yours to ask.");
    return;
  }
  if (!response.ok) return;
  const list = await response.json().catch(() => ({}));
  const chosen = ui.model.value;
  ui.model.replaceChildren();
  for (const model of list.data || []) {
    const option = el("option");
    option.value = option.textContent = model.id;
    ui.model.append(option);
  }
  if (chosen) ui.model.value = chosen;
  if (ui.model.value === "" && ui.model.options.length) ui.model.selectedIndex = 0;
  notice("");
}

// Images: chosen, dropped or pasted; scaled to the API's limit in the browser.
function readDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function takeImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    notice("That is not an image.");
    return;
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (error) {
    notice("That image cannot be read.");
    return;
  }
  const { width, height } = bitmap;
  let scale = Math.min(1, Math.sqrt(settings.max_pixels / (width * height)));
  if (settings.max_side) scale = Math.min(scale, settings.max_side / Math.max(width, height));
  let url = null;
  let size = [width, height];
  if (scale < 1) {
    size = [Math.max(1, Math.floor(width * scale)), Math.max(1, Math.floor(height * scale))];
    const canvas = el("canvas");
    [canvas.width, canvas.height] = size;
    canvas.getContext("2d").drawImage(bitmap, 0, 0, size[0], size[1]);
    url = canvas.toDataURL(file.type === "image/png" ? "image/png" : "image/jpeg", 0.9);
  } else {
    url = await readDataUrl(file);
  }
  bitmap.close();
  state.image = url;
  ui.preview.src = url;
  ui.preview.hidden = false;
  ui.clearImage.hidden = false;
  const scaled = scale < 1 ? ` (scaled down from ${width}×${height})` : "";
  ui.dropHelp.textContent = `${file.name || "Pasted image"}: ${size[0]}×${size[1]}${scaled}`;
  notice("");
}

function clearImage() {
  state.image = null;
  ui.preview.hidden = true;
  ui.preview.removeAttribute("src");
  ui.clearImage.hidden = true;
  ui.file.value = "";
  ui.dropHelp.textContent = "Drop an image here, paste one, or choose a file";
}

ui.file.addEventListener("change", () => takeImage(ui.file.files[0]));
ui.clearImage.addEventListener("click", clearImage);
ui.drop.addEventListener("click", () => ui.file.click());
ui.drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    ui.file.click();
  }
});
ui.drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.drop.classList.add("over");
});
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
ui.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.drop.classList.remove("over");
  takeImage(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.items].find((entry) => entry.type.startsWith("image/"));
  if (item) takeImage(item.getAsFile());
});

// Markdown, safely: every piece of text becomes a text node.
function renderInline(parent, text) {
  const pattern = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\([^)\s]+\))/g;
  let last = 0;
  for (let match = pattern.exec(text); match; match = pattern.exec(text)) {
    if (match.index > last) parent.append(text.slice(last, match.index));
    const token = match[0];
    if (match[1]) {
      const code = el("code");
      code.textContent = token.slice(1, -1);
      parent.append(code);
    } else if (match[2] || match[3]) {
      const node = el(match[2] ? "strong" : "em");
      renderInline(node, match[2] ? token.slice(2, -2) : token.slice(1, -1));
      parent.append(node);
    } else {
      const [, label, href] = /^\[([^\]]+)\]\(([^)\s]+)\)$/.exec(token);
      if (/^https?:\/\//i.test(href)) {
        const link = el("a");
        link.href = href;
        link.rel = "noopener noreferrer nofollow";
        link.target = "_blank";
        link.textContent = label;
        parent.append(link);
      } else {
        parent.append(token);
      }
    }
    last = pattern.lastIndex;
  }
  if (last < text.length) parent.append(text.slice(last));
}

const BLOCK_START = /^(```|#{1,6}\s|\s*([-*+]|\d+[.)])\s)/;

function renderMarkdown(container, text) {
  const blocks = [];
  const lines = text.split("\n");
  let list = null;
  for (let i = 0; i < lines.length; ) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      for (i += 1; i < lines.length && !lines[i].startsWith("```"); i += 1) code.push(lines[i]);
      i += 1;
      const pre = el("pre");
      const inner = el("code");
      inner.textContent = code.join("\n");
      pre.append(inner);
      blocks.push(pre);
      list = null;
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      const node = el("h" + Math.min(6, heading[1].length + 2));
      renderInline(node, heading[2]);
      blocks.push(node);
      list = null;
      i += 1;
      continue;
    }
    const item = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line);
    if (item) {
      const tag = /\d/.test(item[1]) ? "OL" : "UL";
      if (!list || list.tagName !== tag) {
        list = el(tag.toLowerCase());
        blocks.push(list);
      }
      const entry = el("li");
      renderInline(entry, item[2]);
      list.append(entry);
      i += 1;
      continue;
    }
    list = null;
    if (line.trim() === "") {
      i += 1;
      continue;
    }
    const paragraph = [line];
    for (i += 1; i < lines.length && lines[i].trim() !== "" && !BLOCK_START.test(lines[i]); i += 1) {
      paragraph.push(lines[i]);
    }
    const node = el("p");
    renderInline(node, paragraph.join("\n"));
    blocks.push(node);
  }
  container.replaceChildren(...blocks);
}

// Asking: one streamed chat completion per question, the conversation so far included.
function setBusy(busy) {
  ui.send.disabled = busy || Date.now() < state.waitUntil;
  ui.stop.disabled = !busy;
}

function addTurn(role) {
  const turn = el("article", "turn " + role);
  turn.setAttribute("aria-label", role === "user" ? "Your question" : "Answer");
  ui.conversation.append(turn);
  return turn;
}

// 429 and 503 say when to come back: the Ask button waits, counting down.
function waitAndRetry(message, seconds) {
  clearInterval(state.countdown);
  state.waitUntil = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.ceil((state.waitUntil - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(state.countdown);
      notice(message + " You can ask again now.");
      setBusy(false);
      return;
    }
    notice(`${message} Try again in ${left} s.`);
  };
  tick();
  state.countdown = setInterval(tick, 250);
  setBusy(false);
}

async function explain(response) {
  const body = await response.json().catch(() => ({}));
  const detail = (body.error && body.error.message) || response.statusText;
  const retry = Number(response.headers.get("retry-after")) || 0;
  switch (response.status) {
    case 401:
      ui.keyRow.hidden = false;
      ui.key.focus();
      return "This gateway needs a valid API key: enter yours and ask again.";
    case 403:
      return "This API key may not do that: " + detail;
    case 413:
      return "The request is too large for this gateway: " + detail;
    case 429:
      waitAndRetry("Too many requests for now.", retry || 1);
      return null;
    case 503:
      waitAndRetry("The model is busy.", retry || 1);
      return null;
    default:
      return `The gateway answered ${response.status}: ${detail}`;
  }
}

function figures(started, first, ended, tokens, usage) {
  const parts = [];
  if (first !== null) parts.push(`TTFT ${((first - started) / 1000).toFixed(2)} s`);
  const count = usage && usage.completion_tokens != null ? usage.completion_tokens : tokens;
  if (first !== null && ended > first && count > 1) parts.push(`${((count - 1) / ((ended - first) / 1000)).toFixed(1)} tokens/s`);
  parts.push(`${count} tokens`);
  if (usage && usage.prompt_tokens != null) parts.push(`${usage.prompt_tokens} prompt tokens`);
  return parts.join(" · ");
}

async function ask(question) {
  const content = [{ type: "text", text: question }];
  if (state.image) content.push({ type: "image_url", image_url: { url: state.image } });
  const message = { role: "user", content };
  const userTurn = addTurn("user");
  if (state.image) {
    const thumbnail = el("img");
    thumbnail.src = state.image;
    thumbnail.alt = "Your image";
    userTurn.append(thumbnail);
  }
  userTurn.append(question);
  ui.question.value = "";
  const answerTurn = addTurn("assistant");
  const answer = el("div", "answer");
  const meta = el("p", "meta");
  answerTurn.append(answer, meta);
  meta.textContent = "Waiting for the model…";
  notice("");

  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const started = performance.now();
  let first = null;
  let tokens = 0;
  let usage = null;
  let text = "";
  let failure = null;
  let drawn = true;
  const draw = () => {
    drawn = true;
    renderMarkdown(answer, text);
  };
  try {
    const body = { model: ui.model.value, messages: [...state.history, message], stream: true, stream_options: { include_usage: true } };
    const response = await fetch(settings.api + "/chat/completions", {
      method: "POST", headers: requestHeaders(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      // Refused before an answer began: said in the notice; the question can be asked again.
      notice(await explain(response));
    } else {
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        for (let cut = buffer.indexOf("\n\n"); cut >= 0; cut = buffer.indexOf("\n\n")) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let kind = "message";
          const data = [];
          for (const line of event.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
          }
          if (data.length === 0 || data[0] === "[DONE]") continue;
          let chunk;
          try {
            chunk = JSON.parse(data.join("\n"));
          } catch (error) {
            continue;
          }
          if (kind === "error" || chunk.error) {
            failure = "The model stopped with an error: " + ((chunk.error && chunk.error.message) || "unknown");
            continue;
          }
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
          if (delta) {
            if (first === null) {
              first = performance.now();
              meta.textContent = "Answering…";
            }
            tokens += 1;
            text += delta;
            if (drawn) {
              drawn = false;
              requestAnimationFrame(draw);
            }
          }
        }
      }
    }
  } catch (error) {
    failure = error.name === "AbortError" ? null : "The connection to the gateway failed.";
  } finally {
    state.controller = null;
    setBusy(false);
  }
  draw();
  const ended = performance.now();
  if (controller.signal.aborted) {
    meta.textContent = "Stopped · " + figures(started, first, ended, tokens, null);
  } else if (failure !== null || (first === null && text === "" && !usage)) {
    meta.textContent = "";
    if (failure) {
      const error = el("p", "error");
      error.textContent = failure;
      answer.append(error);
    } else {
      answerTurn.remove();
      userTurn.remove();
    }
  } else {
    meta.textContent = figures(started, first, ended, tokens, usage);
  }
  if (text) {
    state.history.push(message, { role: "assistant", content: text });
    clearImage();
  } else if (ui.question.value === "") {
    // Nothing came back: the question (and its image, still attached) can be asked again.
    ui.question.value = question;
  }
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const question = ui.question.value.trim();
  if (!question || ui.send.disabled) return;
  ask(question);
});
ui.question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.form.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => {
  if (state.controller) state.controller.abort();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.controller) state.controller.abort();
});

loadModels();
