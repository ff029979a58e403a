//! URL templates for `put`: free-form text with `{host}` and `{id}` placeholders.
//!
//! Owns parsing (unknown placeholders and stray braces are errors, `{id}` is
//! required so every request names a new resource) and expansion. Pure: it does not
//! check that the result is a valid URL; reqwest does that at the first request.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Host,
    Id,
}

/// A parsed template such as `https://127.0.0.1:8443/v1/episodes/{host}/{id}` or
/// nginx's `https://127.0.0.1:9443/v1/episodes/{host}/{id}.tar.zst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}} (known: {{host}}, {{id}})")]
    Unknown(String),
    #[error("unclosed {{ at byte {0}")]
    Unclosed(usize),
    #[error("stray }} at byte {0}")]
    Stray(usize),
    #[error("the template has no {{id}}: every request must name a new episode")]
    NoId,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(pos) = rest.find(['{', '}']) {
            if rest.as_bytes()[pos] == b'}' {
                return Err(TemplateError::Stray(offset + pos));
            }
            literal.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            let end = after
                .find('}')
                .ok_or(TemplateError::Unclosed(offset + pos))?;
            let name = &after[..end];
            let part = match name {
                "host" => Part::Host,
                "id" => Part::Id,
                other => return Err(TemplateError::Unknown(other.to_owned())),
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            let consumed = pos + 1 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.contains(&Part::Id) {
            return Err(TemplateError::NoId);
        }
        Ok(Self { parts })
    }

    pub fn expand(&self, host: &str, id: &str) -> String {
        let mut out = String::with_capacity(128);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Host => out.push_str(host),
                Part::Id => out.push_str(id),
            }
        }
        out
    }

    /// Whether requests go over TLS (the template starts with `https://`).
    pub fn is_https(&self) -> bool {
        matches!(self.parts.first(), Some(Part::Literal(s)) if s.starts_with("https://"))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(s) => f.write_str(s)?,
                Part::Host => f.write_str("{host}")?,
                Part::Id => f.write_str("{id}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_host_and_id_anywhere() {
        let t = Template::parse("https://127.0.0.1:8443/v1/episodes/{host}/{id}").unwrap();
        assert_eq!(
            t.expand("lab1", "01EP"),
            "https://127.0.0.1:8443/v1/episodes/lab1/01EP"
        );
        assert!(t.is_https());
        let nginx = Template::parse("https://h:9/v1/episodes/{host}/{id}.tar.zst").unwrap();
        assert_eq!(
            nginx.expand("lab2", "x"),
            "https://h:9/v1/episodes/lab2/x.tar.zst"
        );
        let no_host = Template::parse("http://h/put/{id}?h={id}").unwrap();
        assert_eq!(no_host.expand("lab1", "7"), "http://h/put/7?h=7");
        assert!(!no_host.is_https());
        assert_eq!(no_host.to_string(), "http://h/put/{id}?h={id}");
    }

    #[test]
    fn rejects_what_would_silently_misbehave() {
        assert_eq!(Template::parse("http://h/{host}"), Err(TemplateError::NoId));
        assert_eq!(
            Template::parse("http://h/{ID}"),
            Err(TemplateError::Unknown("ID".into()))
        );
        assert_eq!(
            Template::parse("http://h/{id"),
            Err(TemplateError::Unclosed(9))
        );
        assert_eq!(
            Template::parse("http://h/}{id}"),
            Err(TemplateError::Stray(9))
        );
    }
}
