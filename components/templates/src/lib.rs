//! The platform's message templates, as a template component (`template` world): each
//! template a subject, a text body and, for emails, an HTML body, in MiniJinja, per locale.
//! Ops deploy a new version of this component to change a message (`micropay deploy
//! target/components/templates.wasm`), canary it and roll it back like any component; the
//! notification service names the template, the host picks the version.
//!
//! Variables are strict: a template that names a variable the caller did not pass fails
//! (`invalid-variables`) instead of sending a message with a hole in it. HTML bodies escape
//! every variable.

mod messages;

wit_bindgen::generate!({
    world: "template",
    path: "../../wit",
});

use exports::micropay::platform::renderer::Guest;
use micropay::platform::template_types::{RenderError, Rendered};
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

use messages::Message;

struct Templates;

impl Guest for Templates {
    fn render(name: String, locale: String, variables: String) -> Result<Rendered, RenderError> {
        let message = messages::find(&name, &locale)
            .ok_or_else(|| RenderError::UnknownTemplate(format!("no template named {name}")))?;
        let variables: serde_json::Value = serde_json::from_str(&variables)
            .map_err(|err| RenderError::InvalidVariables(format!("the variables are not JSON: {err}")))?;
        let Some(given) = variables.as_object() else {
            return Err(RenderError::InvalidVariables("the variables are not one JSON object".into()));
        };
        if let Some(missing) = message.variables.iter().find(|name| !given.contains_key(**name)) {
            return Err(RenderError::InvalidVariables(format!("{name} needs variable {missing}")));
        }
        render(message, &Value::from_serialize(&variables))
    }
}

/// The line every text body ends with; the second build's says so, for the hot-swap tests.
const SIGNATURE: &str =
    if cfg!(feature = "second-build") { "\n-- \nMicroPay (templates, second build)\n" } else { "\n-- \nMicroPay\n" };

fn render(message: &Message, variables: &Value) -> Result<Rendered, RenderError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let part = |name: &str, source: &str| {
        env.render_named_str(name, source, variables).map_err(|err| match err.kind() {
            ErrorKind::UndefinedError => RenderError::InvalidVariables(format!("{name}: {err}")),
            _ => RenderError::Failed(format!("{name}: {err}")),
        })
    };
    Ok(Rendered {
        subject: message.subject.map(|source| part("subject.txt", source)).transpose()?,
        text: part("body.txt", message.text)? + SIGNATURE,
        // The `.html` name turns escaping on.
        html: message.html.map(|source| part("body.html", source)).transpose()?,
    })
}

export!(Templates);

#[cfg(test)]
mod tests {
    use super::*;
    use messages::DEFAULT_LOCALE;

    fn rendered(name: &str, locale: &str, variables: serde_json::Value) -> Result<Rendered, RenderError> {
        Templates::render(name.into(), locale.into(), variables.to_string())
    }

    #[test]
    fn every_template_renders_with_its_variables() {
        for message in messages::ALL {
            let variables: serde_json::Map<String, serde_json::Value> =
                message.variables.iter().map(|name| (name.to_string(), "x".into())).collect();
            let rendered = rendered(message.name, message.locale, variables.into())
                .unwrap_or_else(|err| panic!("{} ({}): {err:?}", message.name, message.locale));
            assert!(!rendered.text.is_empty());
        }
    }

    #[test]
    fn a_missing_variable_is_refused_and_html_is_escaped() {
        let missing = rendered("verification_code", "en", serde_json::json!({}));
        assert!(matches!(missing, Err(RenderError::InvalidVariables(_))));
        let variables = serde_json::json!({"code": "<b>1</b>", "expires_at": "soon", "purpose": "VERIFY_EMAIL"});
        let html = rendered("verification_code", "en", variables).unwrap().html.unwrap();
        assert!(html.contains("&lt;b&gt;1&lt;&#x2f;b&gt;") && !html.contains("<b>"), "{html}");
    }

    #[test]
    fn an_unknown_locale_falls_back_to_the_default() {
        let variables = serde_json::json!({"code": "123456", "expires_at": "soon", "purpose": "VERIFY_EMAIL"});
        let fr = rendered("verification_code", "fr-CA", variables.clone()).unwrap();
        let xx = rendered("verification_code", "xx", variables).unwrap();
        assert_ne!(fr.subject, xx.subject);
        assert_eq!(messages::find("verification_code", "xx").unwrap().locale, DEFAULT_LOCALE);
    }
}
