//! Who is looking at a console page (its own module: the layout, the error page and the
//! session code all need it, and none of them may import another in a circle).

/// Who is looking: what the page may offer and the CSRF token its forms carry.
#[derive(Clone, Debug)]
pub struct Viewer {
    /// The full token (or no auth): action buttons are shown and accepted.
    pub can_act: bool,
    /// The CSRF token of this session.
    pub csrf: String,
    /// The coordinator needs no token (no login, no logout).
    pub open: bool,
}
