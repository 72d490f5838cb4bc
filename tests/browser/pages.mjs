// The image question page and the admin dashboard in Debian's Chromium, headless, driven by
// playwright-core. Started by tests/it/browser.rs, which runs the gateway, the simulated model and
// a markdown model and passes their addresses in the environment. Each step prints one line; the
// first failure ends the run with a non-zero status. Screenshots go to $SHOTS.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const CHAT_URL = env("CHAT_URL");
const ADMIN_URL = env("ADMIN_URL");
const SIM_URL = env("SIM_URL");
const SHOTS = env("SHOTS");
const step = (text) => console.log(`ok: ${text}`);
const simStats = async () => (await fetch(`${SIM_URL}/stats`)).json();

const browser = await chromium.launch({ executablePath: env("CHROMIUM"), args: ["--no-sandbox"] });
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  // Any script error or refused resource (a CSP violation among them) fails the run; the statuses
  // the steps below provoke are expected.
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !/status of (401|413|429|503)/.test(message.text())) {
      problems.push(`console: ${message.text()}`);
    }
  });

  await page.goto(CHAT_URL);
  const key = page.getByLabel("API key", { exact: true });
  const question = page.getByLabel("Question", { exact: true });
  const notice = page.getByRole("alert");
  const answers = page.locator("article.turn.assistant");
  await key.waitFor();
  step("the page asks for an API key, as its API location wants one");

  await key.fill("ig-wrong");
  await question.fill("Hello?");
  await question.press("Enter");
  await notice.filter({ hasText: "needs a valid API key" }).waitFor();
  step("a wrong key is told so (401)");

  await key.fill(env("KEY_GOOD"));
  await key.press("Tab");
  const models = page.getByLabel("Model", { exact: true });
  await page.waitForFunction(() => document.getElementById("model").options.length === 3);
  await models.selectOption("glm");
  step("with the key, the models load");

  // An image dropped, then one pasted, each replaces the last; then one chosen from the keyboard.
  const help = page.locator("#drop-help");
  const transfer = (name) =>
    page.evaluateHandle(async (name) => {
      const canvas = document.createElement("canvas");
      [canvas.width, canvas.height] = [64, 48];
      canvas.getContext("2d").fillRect(0, 0, 32, 24);
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
      const data = new DataTransfer();
      data.items.add(new File([blob], name, { type: "image/png" }));
      return data;
    }, name);
  await page.dispatchEvent("#drop", "drop", { dataTransfer: await transfer("dropped.png") });
  await help.filter({ hasText: "dropped.png: 64×48" }).waitFor();
  const pasted = await transfer("pasted.png");
  await page.evaluate((data) => document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data })), pasted);
  await help.filter({ hasText: "pasted.png: 64×48" }).waitFor();
  await page.getByRole("button", { name: "Remove image", exact: true }).click();
  assert.ok(await page.locator("#preview").isHidden());
  step("an image can be dropped, pasted and removed");
  const chooser = page.waitForEvent("filechooser");
  await page.getByRole("button", { name: "Image: drop, paste or choose one", exact: true }).focus();
  await page.keyboard.press("Enter");
  await (await chooser).setFiles(env("PHOTO"));
  await help.filter({ hasText: "scaled down from 3000×2000" }).waitFor();
  const [width, height] = (/: (\d+)×(\d+)/.exec(await help.textContent()) || []).slice(1).map(Number);
  assert.ok(width * height <= 1048576 && width * height > 1000000, `scaled to ${width}x${height}`);
  assert.equal(Math.round((width / height) * 10), 15, "the aspect is kept");
  step(`a 3000x2000 image chosen from the keyboard is scaled in the browser to ${width}x${height}`);

  await question.fill("What is in this image?");
  await question.press("Enter");
  const first = answers.nth(0);
  await first.locator(".answer p").waitFor();
  const early = (await first.locator(".answer").textContent()).length;
  await page.waitForTimeout(400);
  const later = (await first.locator(".answer").textContent()).length;
  assert.ok(later > early, `the answer grows as tokens arrive (${early} then ${later} characters)`);
  await first.locator(".meta", { hasText: "tokens/s" }).waitFor({ timeout: 20000 });
  const meta = await first.locator(".meta").textContent();
  const figures = /TTFT (\d+\.\d\d) s · ([\d.]+) tokens\/s · 60 tokens · (\d+) prompt tokens/.exec(meta);
  assert.ok(figures, meta);
  const promptTokens = Number(figures[3]);
  // 3000x2000 unscaled is 107x71 = 7,597 image tokens; scaled, about 43x29.
  assert.ok(promptTokens > 1000 && promptTokens < 1500, `${promptTokens} prompt tokens`);
  step(`the answer streamed in: ${meta}`);
  await page.screenshot({ path: path.join(SHOTS, "chat.png") });

  await question.fill("And what colour is it?");
  await page.getByRole("button", { name: "Ask", exact: true }).click();
  await answers.nth(1).locator(".meta", { hasText: "tokens/s" }).waitFor({ timeout: 20000 });
  assert.equal(await page.locator("article.turn.user").count(), 2);
  step("a second turn is answered");

  const abortedBefore = (await simStats()).aborted;
  await question.fill("Tell me a long story.");
  await question.press("Enter");
  await answers.nth(2).locator(".answer p").waitFor();
  await page.getByRole("button", { name: "Stop", exact: true }).click();
  await answers.nth(2).locator(".meta", { hasText: "Stopped" }).waitFor();
  assert.ok(await page.getByRole("button", { name: "Ask", exact: true }).isEnabled(), "ready for the next question");
  let aborted = abortedBefore;
  for (let i = 0; i < 50 && aborted === abortedBefore; i += 1) {
    await page.waitForTimeout(100);
    aborted = (await simStats()).aborted;
  }
  assert.equal(aborted, abortedBefore + 1, "the model saw the cancel");
  step("Stop ends the answer and the model sees the cancel");

  await models.selectOption("markdown");
  await question.fill("Describe it in markdown.");
  await question.press("Enter");
  const rendered = answers.nth(3).locator(".answer");
  await answers.nth(3).locator(".meta", { hasText: "tokens" }).waitFor();
  assert.equal(await rendered.locator("h4").textContent(), "Seen", "## is a heading below the page's own");
  assert.equal(await rendered.locator("strong").textContent(), "red");
  assert.equal(await rendered.locator("li").count(), 2);
  assert.equal(await rendered.locator("pre code").textContent(), "let x = 1;");
  assert.equal(await page.locator("article.turn.assistant img, #conversation script").count(), 0);
  assert.equal(await rendered.locator("a").count(), 0, "a javascript: link stays text");
  const shown = await rendered.textContent();
  assert.ok(shown.includes("<img src=x onerror=") && shown.includes("<script>"), shown);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  step("markdown is rendered, and the model's HTML stays text");

  await models.selectOption("glm");
  await question.evaluate((area) => {
    area.value = "Why? ".repeat(2_000_000);
  });
  await page.getByRole("button", { name: "Ask", exact: true }).click();
  await notice.filter({ hasText: "too large for this gateway" }).waitFor();
  await question.fill("");
  step("a body over client_max_body_size is told so (413)");

  // The busy model's one slot and one queue place taken: the page's request is told 503.
  const holders = Array.from({ length: 2 }, () => new AbortController());
  const hold = (controller) =>
    fetch(new URL("/v1/chat/completions", CHAT_URL), {
      method: "POST",
      headers: { authorization: `Bearer ${env("KEY_GOOD")}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "busy", stream: true, max_tokens: 400, messages: [{ role: "user", content: "hold" }] }),
      signal: controller.signal,
    }).then((response) => response.body.getReader().read(), () => null);
  await hold(holders[0]);
  const queued = hold(holders[1]);
  await page.waitForTimeout(300);
  await models.selectOption("busy");
  await question.fill("Are you there?");
  await question.press("Enter");
  const busy = notice.filter({ hasText: "The model is busy" });
  await busy.waitFor();
  assert.match(await busy.textContent(), /Try again in \d+ s/);
  holders.forEach((controller) => controller.abort());
  await queued.catch(() => null);
  step("a full queue is told so, with its Retry-After (503)");
  await busy.filter({ hasText: "You can ask again now" }).waitFor({ timeout: 65000 });

  // A key of one request a minute: the second request (its model list may be the first) is refused.
  await key.fill(env("KEY_LIMITED"));
  await key.press("Tab");
  await models.selectOption("glm");
  const countdown = notice.filter({ hasText: "Too many requests" });
  for (let asked = 0; !(await countdown.isVisible()); asked += 1) {
    assert.ok(asked < 2, "the limited key was refused by its second request");
    const answered = await answers.count();
    await question.fill("Quick one?");
    await question.press("Enter");
    await Promise.race([
      countdown.waitFor(),
      answers.nth(answered).locator(".meta", { hasText: "tokens/s" }).waitFor({ timeout: 20000 }),
    ]);
  }
  const seconds = async () => Number(/Try again in (\d+) s/.exec(await countdown.textContent())[1]);
  const before = await seconds();
  assert.ok(before > 2 && before <= 120, `${before} s`);
  assert.ok(await page.getByRole("button", { name: "Ask", exact: true }).isDisabled(), "Ask waits");
  await page.waitForTimeout(2100);
  assert.ok((await seconds()) < before, "the countdown counts down");
  step(`a 429 shows its Retry-After countdown (${before} s)`);
  await page.screenshot({ path: path.join(SHOTS, "chat-429.png") });

  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(overflow <= 390, `${overflow} px wide at phone width`);
  await page.screenshot({ path: path.join(SHOTS, "chat-phone.png") });
  step("readable at phone width");

  // The dashboard, on the admin listener, with its token.
  const dashboard = await context.newPage();
  dashboard.on("pageerror", (error) => problems.push(`dashboard error: ${error.message}`));
  await page.close();
  await dashboard.goto(ADMIN_URL);
  await dashboard.getByLabel("Admin token", { exact: true }).fill(env("ADMIN_TOKEN"));
  await dashboard.getByRole("button", { name: "Use token", exact: true }).click();
  const server = env("SIM_SERVER");
  const row = dashboard.locator(`tr[data-upstream="sim"][data-server="${server}"]`);
  await row.waitFor();
  assert.ok(await dashboard.getByLabel("Admin token", { exact: true }).isHidden(), "signed in");
  // Traffic while it watches: streamed answers through the gateway, a few at a time.
  const api = new URL("/v1/chat/completions", CHAT_URL);
  const traffic = Array.from({ length: 12 }, (_, i) =>
    new Promise((resolve) => setTimeout(resolve, i * 250)).then(() =>
      fetch(api, {
        method: "POST",
        headers: { authorization: `Bearer ${env("KEY_GOOD")}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "glm", stream: true, max_tokens: 20, messages: [{ role: "user", content: "hi" }] }),
      }).then((response) => response.text()),
    ),
  );
  await dashboard
    .waitForFunction(() => {
      const value = (id) => Number.parseFloat(document.getElementById(id).textContent);
      return value("now-requests") > 0 && value("now-tokens") > 0 && !Number.isNaN(value("now-ttft50"));
    }, null, { polling: 100 })
    .catch(async (error) => {
      throw new Error(`the live figures stay at: ${await dashboard.locator("figcaption").allTextContents()}`, { cause: error });
    });
  await Promise.all(traffic);
  step("the dashboard shows the upstreams and live requests, tokens and TTFT");
  await dashboard.getByRole("button", { name: `Drain ${server} of sim` }).click();
  await row.locator("td", { hasText: "draining" }).waitFor();
  const status = await (await fetch(`${ADMIN_URL}status`, { headers: { authorization: `Bearer ${env("ADMIN_TOKEN")}` } })).json();
  const drained = status.upstreams.find((u) => u.name === "sim").servers.find((s) => s.addr === server);
  assert.equal(drained.draining, true);
  await dashboard.waitForTimeout(1500);
  await dashboard.screenshot({ path: path.join(SHOTS, "dashboard.png"), fullPage: true });
  step("Drain takes the server out of rotation");
  await dashboard.getByRole("button", { name: `Undrain ${server} of sim` }).click();
  await row.locator("td", { hasText: "in rotation" }).waitFor();
  step("Undrain puts it back");

  assert.deepEqual(problems, []);
} finally {
  await browser.close();
}
