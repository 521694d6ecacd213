//! One module per provider, and the one place that turns settings into providers.
//!
//! Adding a provider: a module here, a line in `register_all`, a variant of
//! [`crate::ProviderId`], and its settings field in [`crate::PaymentSettings`].

use std::sync::Arc;

use crate::error::SettingsError;
use crate::provider::PaymentProvider;
use crate::settings::PaymentSettings;

pub mod crypto;
pub mod cryptobot;
pub mod telegram;
pub mod yookassa;

/// Builds every provider whose settings are present.
pub(crate) fn register_all(
    settings: &PaymentSettings,
    registry: &mut Registry,
) -> Result<(), SettingsError> {
    registry.add(settings.yookassa.clone(), yookassa::YooKassaProvider::new)?;
    registry.add(settings.crypto.clone(), crypto::CryptoProvider::new)?;
    registry.add(settings.telegram.clone(), telegram::TelegramProvider::new)?;
    registry.add(
        settings.cryptobot.clone(),
        cryptobot::CryptoBotProvider::new,
    )?;
    Ok(())
}

/// Enabled providers, in registration order.
#[derive(Default)]
pub(crate) struct Registry {
    pub providers: Vec<Arc<dyn PaymentProvider>>,
}

impl Registry {
    /// Registers the provider built from `settings`; absent settings = provider disabled. A
    /// second provider with an id already registered is refused.
    pub fn add<S, P>(
        &mut self,
        settings: Option<S>,
        build: impl FnOnce(S) -> Result<P, SettingsError>,
    ) -> Result<(), SettingsError>
    where
        P: PaymentProvider + 'static,
    {
        if let Some(settings) = settings {
            let provider: Arc<dyn PaymentProvider> = Arc::new(build(settings)?);
            let id = provider.id();
            if self.providers.iter().any(|p| p.id() == id) {
                return Err(SettingsError::DuplicateProvider(id));
            }
            self.providers.push(provider);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_provider_with_a_taken_id_is_refused() {
        let settings = || Some(cryptobot::CryptoBotSettings::new("1234:AAA"));
        let mut registry = Registry::default();
        registry
            .add(settings(), cryptobot::CryptoBotProvider::new)
            .expect("the first registers");
        registry
            .add(None, cryptobot::CryptoBotProvider::new)
            .expect("absent settings register nothing");
        let refused = registry
            .add(settings(), cryptobot::CryptoBotProvider::new)
            .expect_err("the id is taken");
        assert!(
            matches!(&refused, SettingsError::DuplicateProvider(id) if *id == cryptobot::ID),
            "{refused:?}"
        );
        assert_eq!(registry.providers.len(), 1);
    }
}
