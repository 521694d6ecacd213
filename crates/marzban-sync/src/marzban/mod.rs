//! The Marzban panel (v0.8.4) as this service uses it: create a user, extend it, reactivate
//! it, read it. Wire facts: shared/reference/external-apis.md §4 and §4b.
//!
//! ```no_run
//! # async fn demo() -> Result<(), marzban_sync::marzban::MarzbanError> {
//! use marzban_sync::marzban::{CreateUser, MarzbanClient, MarzbanSettings};
//! use secrecy::SecretString;
//!
//! let settings = MarzbanSettings::new("https://panel.example.com", "admin", SecretString::from("pw"));
//! let client = MarzbanClient::new(settings)?;
//! let username = domain::ids::MarzbanUsername::parse("tg_42").expect("valid");
//! if client.get_user(&username).await?.is_none() {
//!     let user = CreateUser { username, expire: 1_767_225_600, data_limit: None, note: None };
//!     let created = client.create_user(&user).await?;
//!     println!("{}", client.subscription_url(&created));
//! }
//! # Ok(()) }
//! ```

mod client;
mod panel;
mod types;

pub use client::{MarzbanClient, MarzbanError, MarzbanSettings};
pub use domain::ids::MarzbanUsername;
pub use types::{
    CreateUser, Inbounds, ModifyStatus, ModifyUser, Proxies, UserResponse, UserStatus,
};

/// Makes Marzban's `subscription_url` absolute: the panel returns `/sub/<token>` unless it has
/// `XRAY_SUBSCRIPTION_URL_PREFIX` set, and a customer cannot use a relative link.
pub fn absolute_subscription_url(panel_base: &str, subscription_url: &str) -> String {
    if subscription_url.starts_with("http://") || subscription_url.starts_with("https://") {
        return subscription_url.to_owned();
    }
    format!(
        "{}/{}",
        panel_base.trim_end_matches('/'),
        subscription_url.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::absolute_subscription_url;

    #[test]
    fn relative_subscription_urls_get_the_panel_prefix() {
        assert_eq!(
            absolute_subscription_url("https://panel.example.com/", "/sub/abc"),
            "https://panel.example.com/sub/abc"
        );
        assert_eq!(
            absolute_subscription_url("https://panel.example.com", "sub/abc"),
            "https://panel.example.com/sub/abc"
        );
        assert_eq!(
            absolute_subscription_url(
                "https://panel.example.com",
                "https://sub.example.com/sub/abc"
            ),
            "https://sub.example.com/sub/abc"
        );
    }
}
