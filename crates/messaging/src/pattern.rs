//! AMQP topic-exchange matching, for the in-process bus: words are separated by `.`, `*`
//! matches exactly one word and `#` matches zero or more.

/// `true` when `routing_key` matches the binding `pattern` as a RabbitMQ topic exchange would.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    matches_from(&words(pattern), &words(routing_key))
}

/// As in RabbitMQ, an empty key or pattern has no words at all.
fn words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

fn matches_from(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| matches_from(rest, &key[skip..])),
        Some((&word, rest)) => match key.split_first() {
            Some((&first, key_rest)) => {
                (word == "*" || word == first) && matches_from(rest, key_rest)
            }
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn exact_and_wildcards() {
        assert!(topic_matches("payment.completed", "payment.completed"));
        assert!(!topic_matches("payment.completed", "payment.failed"));
        assert!(topic_matches("payment.*", "payment.failed"));
        assert!(!topic_matches("payment.*", "payment"));
        assert!(!topic_matches("payment.*", "payment.a.b"));
        assert!(topic_matches(
            "provider.notification.*",
            "provider.notification.yookassa"
        ));
        assert!(topic_matches("*.completed", "payment.completed"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("payment.#", "payment"));
        assert!(topic_matches("payment.#", "payment.refunded"));
        assert!(topic_matches("payment.#", "payment.a.b.c"));
        assert!(!topic_matches("payment.#", "subscription.activated"));
        assert!(topic_matches("#.activated", "subscription.activated"));
        assert!(topic_matches("a.#.z", "a.z"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(!topic_matches("a.#.z", "a.b.c"));
        assert!(topic_matches("#.*", "a"));
        assert!(!topic_matches("#.*", ""));
    }
}
