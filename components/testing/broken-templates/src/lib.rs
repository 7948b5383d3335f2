//! A template component that fails every rendering: deployed as a new version of the
//! platform's `templates`, it shows that messages are still rendered, by the version before it.

wit_bindgen::generate!({
    world: "template",
    path: "../../../wit",
});

use exports::micropay::platform::renderer::Guest;
use micropay::platform::template_types::{RenderError, Rendered};

struct Broken;

impl Guest for Broken {
    fn render(name: String, _locale: String, _variables: String) -> Result<Rendered, RenderError> {
        Err(RenderError::Failed(format!("{name}: this build renders nothing")))
    }
}

export!(Broken);
