//! Fields of a request body, checked as every service checks them: a rule a field breaks is a
//! 422 `validation_failed` naming it.

use crate::{ApiError, is_uuid};

/// A UUID, in lower case (as PostgreSQL prints it, so the same id is always the same text).
pub fn uuid(field: &str, text: &str) -> Result<String, ApiError> {
    if is_uuid(text) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(ApiError::validation(format!("{field}: must be a UUID")))
    }
}

/// A free-text field: trimmed, at most `max` characters (the column's `VARCHAR` size), without
/// control characters (PostgreSQL refuses NUL). Empty text is no value.
pub fn text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    let Some(value) = value.map(str::trim) else { return Ok(None) };
    if value.chars().any(char::is_control) {
        return Err(ApiError::validation(format!("{field}: must not contain control characters")));
    }
    if value.chars().count() > max {
        return Err(ApiError::validation(format!("{field}: must be at most {max} characters")));
    }
    Ok((!value.is_empty()).then(|| value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

    #[test]
    fn ids_are_uuids_in_lower_case() {
        assert_eq!(uuid("payment_id", &ID.to_uppercase()).unwrap(), ID);
        let refused = uuid("payment_id", "42").unwrap_err();
        assert_eq!((refused.status, refused.code.as_str()), (422, "validation_failed"));
        assert!(refused.message.contains("payment_id"));
    }

    #[test]
    fn texts_are_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(text("description", None, 5).unwrap(), None);
        assert_eq!(text("description", Some(" "), 5).unwrap(), None);
        assert_eq!(text("description", Some(" rent "), 5).unwrap().as_deref(), Some("rent"));
        assert_eq!(text("description", Some("123456"), 5).unwrap_err().status, 422);
        assert_eq!(text("description", Some("a\u{0}b"), 5).unwrap_err().status, 422);
    }
}
