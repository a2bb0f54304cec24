//! Prompt templates: text with `{{name}}` placeholders, filled from a row,
//! and `{{file:path}}` placeholders, replaced by a text file's content when
//! the spec is read. `{{outputs.…}}` placeholders are left in the text:
//! they name other items' answers, filled when the item is sent
//! ([`super::deps`]).

/// A parsed template: literal text and the placeholders between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A placeholder, by its index in the spec's list of names.
    Var(usize),
}

/// What a template is filled from: the value of each placeholder name, in
/// the order of the spec's list of names.
pub(super) type Row<'a> = [Option<std::borrow::Cow<'a, str>>];

impl Template {
    /// Parses `text`. Each placeholder's name is looked up in (or added to)
    /// `names`; `include` reads the file of a `{{file:path}}` placeholder.
    /// An unclosed `{{` or an empty or malformed name is an error.
    pub(super) fn parse(
        text: &str,
        names: &mut Vec<String>,
        include: &mut dyn FnMut(&str) -> Result<String, String>,
    ) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut literal = String::new();
        while let Some(open) = rest.find("{{") {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "`{{{{` at byte {} is never closed by `}}}}`",
                    text.len() - rest.len() + open + 1
                )
            })?;
            let name = after[..close].trim();
            rest = &after[close + 2..];
            if let Some(file) = name.strip_prefix("file:") {
                literal.push_str(&include(file.trim())?);
                continue;
            }
            if name.starts_with("outputs.") {
                literal.push_str(&format!("{{{{{name}}}}}"));
                continue;
            }
            check_name(name)?;
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            let index = match names.iter().position(|n| n == name) {
                Some(index) => index,
                None => {
                    names.push(name.to_owned());
                    names.len() - 1
                }
            };
            parts.push(Part::Var(index));
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// The text with every placeholder filled from `row`; the first name
    /// `row` has no value for is the error.
    pub(super) fn fill(&self, row: &Row<'_>) -> Result<String, usize> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(index) => out.push_str(row[*index].as_deref().ok_or(*index)?),
            }
        }
        Ok(out)
    }
}

/// A placeholder name: letters, digits, `_`, `-` and `.`, not empty.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{{{{{name}}}}}` is not a placeholder: a name is letters, digits, `_`, `-` and `.`, \
             or `file:PATH`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn parse(text: &str, names: &mut Vec<String>) -> Result<Template, String> {
        Template::parse(text, names, &mut |file| Ok(format!("<{file}>")))
    }

    #[test]
    fn placeholders_are_filled_and_files_included_once() {
        let mut names = vec!["lang".to_owned()];
        let t = parse(
            "Say {{ text }} in {{lang}}. {{file:a.txt}}{{text}}",
            &mut names,
        )
        .unwrap();
        assert_eq!(names, ["lang", "text"]);
        let row = [Some(Cow::Borrowed("French")), Some(Cow::Borrowed("hi"))];
        assert_eq!(t.fill(&row).unwrap(), "Say hi in French. <a.txt>hi");
        assert_eq!(t.fill(&[Some(Cow::Borrowed("x")), None]), Err(1));
        // Other items' answers are filled when the item is sent.
        let t = parse("{{lang}}: {{ outputs.a.json.x }}", &mut names).unwrap();
        assert_eq!(names, ["lang", "text"]);
        assert_eq!(t.fill(&row).unwrap(), "French: {{outputs.a.json.x}}");
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        let mut names = Vec::new();
        assert!(parse("a {{b", &mut names)
            .unwrap_err()
            .contains("never closed"));
        assert!(parse("a {{}}", &mut names)
            .unwrap_err()
            .contains("not a placeholder"));
        assert!(parse("{{a b}}", &mut names)
            .unwrap_err()
            .contains("not a placeholder"));
        assert!(parse("no placeholders", &mut names).is_ok());
        assert!(names.is_empty());
    }
}
