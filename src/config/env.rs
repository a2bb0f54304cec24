//! `${VAR}` expansion in key strings.
//!
//! `${NAME}` is replaced by the variable's value anywhere in the string
//! (`prefix-${X}` works); `$$` is an escape for a literal `$`; a `$` followed
//! by anything else stays as written. Messages never quote the string, which
//! may contain part of a key.

/// Why a template could not be expanded.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ExpandError {
    /// The named variable is not set.
    Missing(String),
    /// The template itself is malformed; the text is the reason.
    Syntax(&'static str),
}

/// Expands `template`, looking variables up with `env`. Stops at the first
/// missing variable.
pub(super) fn expand(
    template: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(ExpandError::Syntax(
                "unterminated `${` (write `$$` for a literal `$`)",
            ))?;
            let name = &body[..end];
            if !is_var_name(name) {
                return Err(ExpandError::Syntax(
                    "`${…}` must hold an environment variable name (letters, digits and `_`)",
                ));
            }
            out.push_str(&env(name).ok_or_else(|| ExpandError::Missing(name.to_owned()))?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// POSIX shell variable names: what `export` accepts.
fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_whole_and_embedded_references() {
        assert_eq!(expand("${A}", &env).unwrap(), "alpha");
        assert_eq!(expand("pre-${A}-post", &env).unwrap(), "pre-alpha-post");
        assert_eq!(expand("${A}${A}", &env).unwrap(), "alphaalpha");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
    }

    #[test]
    fn literals_and_escapes_stay() {
        assert_eq!(expand("AIzaSyPlainKey", &env).unwrap(), "AIzaSyPlainKey");
        assert_eq!(expand("a$b", &env).unwrap(), "a$b");
        assert_eq!(expand("trailing$", &env).unwrap(), "trailing$");
        assert_eq!(expand("$${A}", &env).unwrap(), "${A}");
        assert_eq!(expand("$$", &env).unwrap(), "$");
    }

    #[test]
    fn reports_the_missing_variable() {
        assert_eq!(
            expand("x-${A}-${NOPE}", &env),
            Err(ExpandError::Missing("NOPE".to_owned()))
        );
    }

    #[test]
    fn rejects_malformed_references() {
        assert!(matches!(expand("${A", &env), Err(ExpandError::Syntax(_))));
        assert!(matches!(expand("${}", &env), Err(ExpandError::Syntax(_))));
        assert!(matches!(expand("${1A}", &env), Err(ExpandError::Syntax(_))));
        assert!(matches!(
            expand("${A-B}", &env),
            Err(ExpandError::Syntax(_))
        ));
    }
}
