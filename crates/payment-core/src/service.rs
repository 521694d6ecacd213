//! `PaymentService`: the registry of enabled providers and the entry point for callers.

use std::sync::Arc;

use domain::money::Currency;

use crate::ProviderId;
use crate::error::{ProviderError, SettingsError, WebhookError};
use crate::provider::{
    CreatePaymentRequest, CreatedPayment, PaymentProvider, PaymentRef, ProviderDescriptor,
    ProviderPayment, ProviderRefund, RefundRequest,
};
use crate::providers::{self, Registry};
use crate::settings::PaymentSettings;
use crate::webhook::{WebhookNotification, WebhookRequest};

/// Selects the provider for a payment among the enabled ones.
#[derive(Clone, Default)]
pub struct PaymentService {
    /// In registration order, the order lists and menus show them in; a handful at most, so a
    /// look-up by id is a scan.
    providers: Vec<Arc<dyn PaymentProvider>>,
}

impl std::fmt::Debug for PaymentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentService")
            .field(
                "providers",
                &self.providers.iter().map(|p| p.id()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PaymentService {
    /// Enables exactly the providers whose settings are present.
    pub fn from_settings(settings: &PaymentSettings) -> Result<Self, SettingsError> {
        let mut registry = Registry::default();
        providers::register_all(settings, &mut registry)?;
        Ok(Self::from_providers(registry.providers))
    }

    /// A service over the given providers, listed in this order (tests, or a caller with its
    /// own wiring); of two with one id the later wins.
    pub fn from_providers(providers: impl IntoIterator<Item = Arc<dyn PaymentProvider>>) -> Self {
        let mut service = Self::default();
        for provider in providers {
            let id = provider.id();
            service.providers.retain(|p| p.descriptor().id != id);
            service.providers.push(provider);
        }
        service
    }

    pub fn provider(&self, id: ProviderId) -> Result<&Arc<dyn PaymentProvider>, ProviderError> {
        self.provider_named(&id)
            .ok_or(ProviderError::NotEnabled(id))
    }

    /// The enabled provider stored under `name` (`payments.provider`, the inbox's `provider`);
    /// `None` for a name no enabled provider has.
    pub fn provider_named(&self, name: &ProviderId) -> Option<&Arc<dyn PaymentProvider>> {
        self.providers.iter().find(|p| p.descriptor().id == *name)
    }

    /// Whether any enabled provider checks its own notifications in a loop of its own
    /// ([`PaymentProvider::checks_own_notices`]).
    pub fn checks_own_notices(&self, name: &ProviderId) -> bool {
        self.provider_named(name)
            .is_some_and(|p| p.checks_own_notices())
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    pub fn is_enabled(&self, id: ProviderId) -> bool {
        self.provider_named(&id).is_some()
    }

    /// The enabled providers, in registration order.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn PaymentProvider>> {
        self.providers.iter()
    }

    /// The enabled providers' descriptors, in registration order.
    pub fn descriptors(&self) -> Vec<&ProviderDescriptor> {
        self.providers.iter().map(|p| p.descriptor()).collect()
    }

    /// The enabled providers that charge in `currency`.
    pub fn providers_for(&self, currency: Currency) -> Vec<&ProviderDescriptor> {
        self.descriptors()
            .into_iter()
            .filter(|d| d.currencies.contains(&currency))
            .collect()
    }

    pub async fn create_payment(
        &self,
        provider: ProviderId,
        request: &CreatePaymentRequest,
    ) -> Result<CreatedPayment, ProviderError> {
        self.provider(provider)?.create_payment(request).await
    }

    pub async fn get_payment_status(
        &self,
        provider: ProviderId,
        payment: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError> {
        self.provider(provider)?.get_payment_status(payment).await
    }

    pub async fn refund(
        &self,
        provider: ProviderId,
        request: &RefundRequest,
    ) -> Result<ProviderRefund, ProviderError> {
        let provider = self.provider(provider)?;
        if !provider.descriptor().supports_refunds {
            return Err(ProviderError::Unsupported("refund"));
        }
        provider.refund(request).await
    }

    /// Verifies and parses a webhook call for `provider`. A disabled provider's webhook is
    /// reported as `Ok(None)` so the gateway can answer 404 without revealing more.
    pub async fn receive_webhook(
        &self,
        provider: ProviderId,
        request: &WebhookRequest<'_>,
    ) -> Result<Option<WebhookNotification>, WebhookError> {
        match self.provider_named(&provider) {
            Some(p) => p.receive_webhook(request).await.map(Some),
            None => Ok(None),
        }
    }
}
