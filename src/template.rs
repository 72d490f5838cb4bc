//! Strings with nginx-style variables (`https://$host$request_uri`), split into parts once at config
//! load so that a request only concatenates.

/// The request facts a template may use.
pub(crate) struct Vars<'a> {
    /// `http` or `https`.
    pub(crate) scheme: &'a str,
    /// Host from the request without port, or the server's first name.
    pub(crate) host: &'a str,
    /// The matched server's first `server_name` (or the host when it has none).
    pub(crate) server_name: &'a str,
    /// Path and query as the client sent them.
    pub(crate) request_uri: &'a str,
    /// Path alone.
    pub(crate) uri: &'a str,
    /// Query alone (without `?`).
    pub(crate) args: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Scheme,
    Host,
    ServerName,
    RequestUri,
    Uri,
    Args,
}

const VARIABLES: [(&str, Var); 6] = [
    ("request_uri", Var::RequestUri),
    ("server_name", Var::ServerName),
    ("scheme", Var::Scheme),
    ("host", Var::Host),
    ("args", Var::Args),
    ("uri", Var::Uri),
];

/// Literal text or a variable, in the order a string names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part<V> {
    /// Text as written.
    Text(String),
    /// A variable, filled in per request.
    Var(V),
}

/// Splits `text` into literal text and variables, `$name` or `${name}`, a name being letters, digits
/// and `_` as nginx reads it; `variable` makes a name into a variable or says why it is none. Redirect
/// templates and access log formats are both split by it.
pub(crate) fn split<V>(text: &str, variable: impl Fn(&str) -> Result<V, String>) -> Result<Vec<Part<V>>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        literal.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (braced, name_area) = match after.strip_prefix('{') {
            Some(inner) => (true, inner),
            None => (false, after),
        };
        let name_len = name_area.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name_area.len());
        let name = &name_area[..name_len];
        let var = variable(name)?;
        if !literal.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut literal)));
        }
        parts.push(Part::Var(var));
        rest = &name_area[name_len..];
        if braced {
            rest = rest.strip_prefix('}').ok_or_else(|| format!("unclosed `${{{name}` (expected `}}`)"))?;
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    Ok(parts)
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part<Var>>,
}

impl Template {
    /// Splits `text` into literal text and variables; an unknown variable is an error naming the known ones.
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let parts = split(text, |name| {
            VARIABLES.iter().find(|(known, _)| *known == name).map(|(_, var)| *var).ok_or_else(|| {
                let known: Vec<_> = VARIABLES.iter().map(|(n, _)| format!("${n}")).collect();
                format!("unknown variable `${name}` (known: {})", known.join(", "))
            })
        })?;
        Ok(Template { parts })
    }

    /// Fills in the variables.
    pub(crate) fn render(&self, vars: &Vars) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            out.push_str(match part {
                Part::Text(text) => text,
                Part::Var(Var::Scheme) => vars.scheme,
                Part::Var(Var::Host) => vars.host,
                Part::Var(Var::ServerName) => vars.server_name,
                Part::Var(Var::RequestUri) => vars.request_uri,
                Part::Var(Var::Uri) => vars.uri,
                Part::Var(Var::Args) => vars.args,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_seed_redirect() {
        let template = Template::parse("https://$server_name$request_uri").unwrap();
        let vars = Vars {
            scheme: "http",
            host: "h",
            server_name: "api.example.com",
            request_uri: "/a?b=1",
            uri: "/a",
            args: "b=1",
        };
        assert_eq!(template.render(&vars), "https://api.example.com/a?b=1");
        let braced = Template::parse("${scheme}://${host}x$uri?$args").unwrap();
        assert_eq!(braced.render(&vars), "http://hx/a?b=1");
    }

    #[test]
    fn unknown_variables_are_errors() {
        assert!(Template::parse("$nope").unwrap_err().contains("unknown variable `$nope`"));
        assert!(Template::parse("${host").is_err());
    }
}
