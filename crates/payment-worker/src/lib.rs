//! payment-worker
