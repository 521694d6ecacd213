//! The transport against a local HTTP server: what is retried, how often, and what is not.

use std::time::Duration;

use outbound::{
    Answer, Classify, Exchange, HttpRetry, Transient, TransientFailure, Transport, Verdict,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Debug, PartialEq, Eq)]
enum TestError {
    Rejected(u16),
    Unavailable {
        attempts: u32,
        last: TransientFailure,
    },
}

struct Hook;

impl Classify for Hook {
    type Output = Vec<u8>;
    type Error = TestError;

    fn classify(&self, exchange: Exchange) -> Verdict<Vec<u8>, TestError> {
        match exchange {
            Exchange::Failed(error) => Verdict::Retry(Transient::from_wire(&error)),
            Exchange::Answered(Answer {
                status: 200..=201,
                body,
                ..
            }) => Verdict::Done(body),
            Exchange::Answered(answer) if answer.status == 429 || answer.status >= 500 => {
                Verdict::Retry(Transient::from_status(&answer))
            }
            Exchange::Answered(answer) => Verdict::Fail(TestError::Rejected(answer.status)),
        }
    }

    fn exhausted(&self, attempts: u32, last: Transient) -> TestError {
        TestError::Unavailable {
            attempts,
            last: last.failure,
        }
    }
}

fn quick(max_attempts: u32) -> HttpRetry {
    HttpRetry {
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
    }
}

async fn served(answers: &[ResponseTemplate]) -> MockServer {
    let server = MockServer::start().await;
    for answer in answers {
        Mock::given(method("POST"))
            .and(path("/call"))
            .respond_with(answer.clone())
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
    }
    server
}

async fn call(transport: &Transport, server: &MockServer) -> Result<Vec<u8>, TestError> {
    let url = format!("{}/call", server.uri());
    transport
        .send(&Hook, |http| http.post(&url).body("same body"))
        .await
}

#[tokio::test]
async fn transient_answers_are_retried_with_the_same_request() {
    let server = served(&[
        ResponseTemplate::new(503),
        ResponseTemplate::new(429).insert_header("Retry-After", "0"),
        ResponseTemplate::new(200).set_body_string("ok"),
    ])
    .await;
    let transport = Transport::new("test", quick(4), None).expect("transport");
    assert_eq!(call(&transport, &server).await, Ok(b"ok".to_vec()));
    let requests = server.received_requests().await.expect("recorded");
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.body == b"same body"));
}

#[tokio::test]
async fn a_definite_refusal_is_not_retried() {
    let server = served(&[ResponseTemplate::new(400), ResponseTemplate::new(200)]).await;
    let transport = Transport::new("test", quick(4), None).expect("transport");
    assert_eq!(
        call(&transport, &server).await,
        Err(TestError::Rejected(400))
    );
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
}

#[tokio::test]
async fn attempts_run_out_into_the_hooks_error() {
    let server = served(&[
        ResponseTemplate::new(500),
        ResponseTemplate::new(502),
        ResponseTemplate::new(503),
        ResponseTemplate::new(200),
    ])
    .await;
    let transport = Transport::new("test", quick(3), None).expect("transport");
    assert_eq!(
        call(&transport, &server).await,
        Err(TestError::Unavailable {
            attempts: 3,
            last: TransientFailure::ServerError(503)
        })
    );
    assert_eq!(server.received_requests().await.expect("recorded").len(), 3);
}

#[tokio::test]
async fn one_attempt_means_no_retry_and_no_answer_is_transient() {
    let server = served(&[ResponseTemplate::new(500), ResponseTemplate::new(200)]).await;
    let once = Transport::new("test", HttpRetry::once(Duration::from_secs(5)), None).expect("t");
    assert_eq!(
        call(&once, &server).await,
        Err(TestError::Unavailable {
            attempts: 1,
            last: TransientFailure::ServerError(500)
        })
    );
    // Nothing listens on a port whose listener is gone: a connection failure.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let closed = once
        .send(&Hook, |http| {
            http.post(format!("http://127.0.0.1:{port}/call"))
        })
        .await;
    assert!(
        matches!(
            closed,
            Err(TestError::Unavailable {
                attempts: 1,
                last: TransientFailure::Connection(_)
            })
        ),
        "{closed:?}"
    );
}
