//! One module per provider, and the one place that turns settings into providers.
//!
//! Adding a provider: a module here, a line in `register_all`, a variant of
//! [`crate::ProviderId`], and its settings field in [`crate::PaymentSettings`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ProviderId;
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

/// Enabled providers by id.
#[derive(Default)]
pub(crate) struct Registry {
    pub providers: BTreeMap<ProviderId, Arc<dyn PaymentProvider>>,
}

impl Registry {
    /// Registers the provider built from `settings`; absent settings = provider disabled.
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
            self.providers.insert(provider.id(), provider);
        }
        Ok(())
    }
}
