//! Filter expressions (`image_distance(reference, target.image) > 0.02`): parse and list the
//! variables they read, with the same engine and rules as templates.

use std::collections::BTreeSet;

use minijinja::Environment;

use crate::PromptError;

/// The variables (dotted paths) an expression reads, including the functions it calls.
///
/// # Errors
/// [`PromptError::Syntax`] when the expression does not parse.
pub fn expression_variables(name: &str, expression: &str) -> Result<BTreeSet<String>, PromptError> {
    let env = Environment::new();
    let compiled = env
        .compile_expression(expression)
        .map_err(|error| PromptError::Syntax {
            name: name.to_string(),
            line: error.line().unwrap_or(1),
            message: error.detail().unwrap_or("invalid expression").to_string(),
        })?;
    Ok(compiled.undeclared_variables(true).into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_functions_and_paths() {
        let vars = expression_variables("no_op", "image_distance(reference, target.image) > 0.02")
            .unwrap();
        let vars: Vec<_> = vars.into_iter().collect();
        assert_eq!(vars, ["image_distance", "reference", "target.image"]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(expression_variables("f", "a >").is_err());
    }
}
