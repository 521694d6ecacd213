//! The trait is implementable from outside with only the four required methods and an id
//! of the provider's own, and the service selects providers by id.

use std::sync::Arc;

use async_trait::async_trait;
use domain::PaymentId;
use domain::money::{Currency, Money};
use payment_core::{
    Confirmation, CreatePaymentRequest, CreatedPayment, PaymentProvider, PaymentRef,
    PaymentService, PaymentStatus, ProviderDescriptor, ProviderError, ProviderId, ProviderPayment,
    RefundRequest, WebhookError, WebhookHeaders, WebhookNotification, WebhookRequest,
    WebhookSubject,
};
use uuid::Uuid;

struct Transfer;

/// A provider from outside the crate names itself: no list of providers is edited.
const TRANSFER: ProviderId = ProviderId::from_static("bank_transfer");

static DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: TRANSFER,
    title: "Test transfer",
    currencies: &[Currency::Usdt],
    supports_refunds: false,
};

#[async_trait]
impl PaymentProvider for Transfer {
    fn descriptor(&self) -> &ProviderDescriptor {
        &DESCRIPTOR
    }

    async fn create_payment(
        &self,
        request: &CreatePaymentRequest,
    ) -> Result<CreatedPayment, ProviderError> {
        Ok(CreatedPayment {
            provider_payment_id: request.payment_id.to_string(),
            status: PaymentStatus::Pending,
            amount: request.amount,
            confirmation: Some(Confirmation::Transfer {
                network: "TRC20".into(),
                address: "TXYZ".into(),
                amount: request.amount,
                expires_at: None,
            }),
            expires_at: None,
            test: true,
        })
    }

    async fn get_payment_status(
        &self,
        payment: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError> {
        Ok(ProviderPayment {
            provider_payment_id: payment.provider_payment_id.clone(),
            status: PaymentStatus::Pending,
            amount: payment.amount,
            refunded: Money::new(0, payment.amount.currency()),
            paid_at: None,
            failure_reason: None,
            confirmation: None,
            test: true,
            saved_method: None,
        })
    }

    async fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        match request.headers.get("x-signature") {
            Some("ok") => Ok(()),
            _ => Err(WebhookError::MalformedBody("unsigned".into())),
        }
    }

    async fn process_webhook(&self, body: &[u8]) -> Result<WebhookNotification, WebhookError> {
        Ok(WebhookNotification {
            provider: self.id(),
            event: "transfer.seen".into(),
            subject: WebhookSubject::Other {
                object_id: Some(String::from_utf8_lossy(body).into_owned()),
            },
            claimed_status: None,
            dedupe_key: "transfer.seen".into(),
        })
    }
}

#[tokio::test]
async fn a_minimal_provider_plugs_in() {
    let service = PaymentService::from_providers([Arc::new(Transfer) as Arc<dyn PaymentProvider>]);
    assert_eq!(service.providers_for(Currency::Usdt).len(), 1);
    let request = CreatePaymentRequest {
        payment_id: PaymentId::new(),
        amount: Money::new(5_000_000, Currency::Usdt),
        description: "VPN".into(),
        metadata: Default::default(),
        return_url: None,
        receipt_email: None,
        recurring: Default::default(),
    };
    let created = service
        .create_payment(TRANSFER, &request)
        .await
        .expect("created");
    assert!(matches!(
        created.confirmation,
        Some(Confirmation::Transfer { .. })
    ));

    // The default pipeline verifies before it parses.
    let signed = WebhookHeaders::from_pairs([("X-Signature", "ok")]);
    let req = WebhookRequest {
        peer: "127.0.0.1".parse().expect("ip"),
        headers: &signed,
        body: b"tx1",
    };
    assert!(
        service
            .receive_webhook(TRANSFER, &req)
            .await
            .expect("ok")
            .is_some()
    );
    let unsigned = WebhookHeaders::new();
    let req = WebhookRequest {
        headers: &unsigned,
        ..req
    };
    assert!(service.receive_webhook(TRANSFER, &req).await.is_err());

    // Refunds: not supported unless the provider says so.
    let refund = RefundRequest {
        refund_id: Uuid::new_v4(),
        payment: PaymentRef {
            payment_id: request.payment_id,
            provider_payment_id: created.provider_payment_id,
            amount: request.amount,
        },
        payment_status: PaymentStatus::Succeeded,
        already_refunded: Money::new(0, Currency::Usdt),
        amount: request.amount,
        reason: None,
    };
    assert!(matches!(
        service.refund(TRANSFER, &refund).await,
        Err(ProviderError::Unsupported("refund"))
    ));
}
