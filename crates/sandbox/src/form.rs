//! `application/x-www-form-urlencoded` bodies and query strings, as the emulated APIs accept
//! them (Marzban's token form, Telegram's form parameters).

/// `application/x-www-form-urlencoded` (also query strings) into pairs, in order.
pub fn parse(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(key), form_decode(value))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn forms_are_percent_and_plus_decoded() {
        let pairs = parse("username=ad+min&password=p%40ss%3D%&x");
        assert_eq!(
            pairs,
            vec![
                ("username".to_owned(), "ad min".to_owned()),
                ("password".to_owned(), "p@ss=%".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
    }
}
