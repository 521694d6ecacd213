//! The environment variables a binary reads, as data: each settings module lists its own
//! ([`EnvVar`]), each binary joins the lists of the modules it loads (`env_vars()` next to its
//! `Settings`). `crates/deploy-check` proves the lists against the settings code (every variable
//! read is listed, every listed default is the code's) and checks `.env.example`,
//! `docker-compose.yml` and the README's configuration table against them.
//!
//! [`Vars`] is the one reader of those variables, used by every settings module: typed
//! getters, blank means unset, errors ([`EnvError`]) that name the variable, and each read
//! noted for [`record_reads`] — how `deploy-check` knows what a binary reads.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// One environment variable: its name, the value the code uses when it is unset or blank
/// (`None`: no value — the feature it belongs to stays off), and whether start-up refuses to
/// run without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub required: bool,
}

impl EnvVar {
    /// A variable with no default that the binary can run without.
    pub const fn optional(name: &'static str) -> Self {
        Self {
            name,
            default: None,
            required: false,
        }
    }

    /// A variable with a default.
    pub const fn default(name: &'static str, value: &'static str) -> Self {
        Self {
            name,
            default: Some(value),
            required: false,
        }
    }

    /// A variable start-up refuses to run without.
    pub const fn required(name: &'static str) -> Self {
        Self {
            name,
            default: None,
            required: true,
        }
    }
}

/// Joins lists; a later entry of the same name replaces an earlier one in place (a binary
/// overriding a shared default, as the standalone binary does with `DATABASE_URL`).
pub fn join(lists: &[&[EnvVar]]) -> Vec<EnvVar> {
    let mut joined: Vec<EnvVar> = Vec::new();
    for var in lists.iter().flat_map(|list| list.iter()) {
        match joined.iter_mut().find(|known| known.name == var.name) {
            Some(known) => *known = *var,
            None => joined.push(*var),
        }
    }
    joined
}

/// The environment as settings code reads it: every variable as a string, keyed by its
/// lower-case name (how `config` hands them over, so a service's settings deserialise with
/// `#[serde(try_from = "Vars")]`). The getters trim values and treat a blank one as unset,
/// so a feature is turned off by deleting or blanking its variables; every error names its
/// variable. Each read is noted for [`record_reads`].
#[derive(Clone, Default, Deserialize)]
pub struct Vars {
    #[serde(flatten)]
    vars: HashMap<String, String>,
}

/// Names only: the values hold tokens and passwords.
impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Vars").field("names", &names).finish()
    }
}

impl<K: AsRef<str>, V: Into<String>> FromIterator<(K, V)> for Vars {
    /// Names in any case.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.into()))
                .collect(),
        }
    }
}

/// A variable is malformed, or missing while another one needs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("setting {name} is missing (required with {needed_by})")]
    Missing {
        name: &'static str,
        needed_by: &'static str,
    },
    #[error("setting {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl EnvError {
    pub fn invalid(name: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            name,
            reason: reason.to_string(),
        }
    }

    /// The variable to fix.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Missing { name, .. } | Self::Invalid { name, .. } => name,
        }
    }
}

/// For settings code whose errors are messages (a service's `TryFrom<Vars>`).
impl From<EnvError> for String {
    fn from(error: EnvError) -> Self {
        error.to_string()
    }
}

/// The message of a malformed setting, for settings code whose errors are messages.
pub fn invalid(name: &'static str, reason: impl std::fmt::Display) -> String {
    EnvError::invalid(name, reason).to_string()
}

/// The fewest characters of a token or shared secret ([`Vars::strong_secret`]).
pub const MIN_SECRET_CHARS: usize = 32;

impl Vars {
    /// The process environment (load `.env` into it first). Variables whose name or value is
    /// not Unicode are left out, as `std::env::var` would not read them either.
    pub fn from_env() -> Self {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }

    /// The trimmed value of `name`, if set and not blank.
    pub fn get(&self, name: &'static str) -> Option<&str> {
        note_read(name);
        self.vars
            .get(&name.to_ascii_lowercase())
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The value of the first of `names` that is set: a variable before its older aliases
    /// (`WORKER_OPS_BIND`, then `WORKER_BIND`).
    pub fn first_of(&self, names: &[&'static str]) -> Option<&str> {
        names.iter().find_map(|name| self.get(name))
    }

    /// The value of `name`, which `needed_by` (a variable, or a phrase naming the setting
    /// that is on) needs.
    pub fn require(&self, name: &'static str, needed_by: &'static str) -> Result<&str, EnvError> {
        self.get(name).ok_or(EnvError::Missing { name, needed_by })
    }

    /// A secret (kept out of `Debug` output).
    pub fn secret(&self, name: &'static str) -> Option<SecretString> {
        self.get(name).map(|v| SecretString::from(v.to_owned()))
    }

    /// A token or shared secret that guards a door (`API_SERVICE_TOKEN`, …): unset is allowed
    /// (the door stays shut), a set value needs at least [`MIN_SECRET_CHARS`] characters.
    pub fn strong_secret(&self, name: &'static str) -> Result<Option<SecretString>, EnvError> {
        match self.get(name) {
            None => Ok(None),
            Some(value) if value.chars().count() < MIN_SECRET_CHARS => Err(EnvError::invalid(
                name,
                format!(
                    "must be at least {MIN_SECRET_CHARS} characters, it has {} \
                     (make one with `openssl rand -hex 32`)",
                    value.chars().count()
                ),
            )),
            Some(value) => Ok(Some(SecretString::from(value.to_owned()))),
        }
    }

    /// Refuses `second` when it is set to the same value as `first` (two roles, one token).
    pub fn distinct(&self, first: &'static str, second: &'static str) -> Result<(), EnvError> {
        match (self.get(first), self.get(second)) {
            (Some(a), Some(b)) if a == b => Err(EnvError::invalid(
                second,
                format!("must differ from {first}"),
            )),
            _ => Ok(()),
        }
    }

    /// `name` parsed, if set.
    pub fn parse<T: FromStr>(&self, name: &'static str) -> Result<Option<T>, EnvError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|v| v.parse::<T>().map_err(|e| EnvError::invalid(name, e)))
            .transpose()
    }

    /// `name` parsed, or `default` when unset.
    pub fn parse_or<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, EnvError>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.parse(name)?.unwrap_or(default))
    }

    /// `name` as a boolean ([`parse_bool`]), if set.
    pub fn flag(&self, name: &'static str) -> Result<Option<bool>, EnvError> {
        self.get(name)
            .map(|v| {
                parse_bool(v).ok_or_else(|| {
                    EnvError::invalid(name, format!("expected true or false, got {v:?}"))
                })
            })
            .transpose()
    }

    /// `name` as an `http://` or `https://` URL without its trailing `/`, if set.
    pub fn url(&self, name: &'static str) -> Result<Option<&str>, EnvError> {
        match self.get(name) {
            Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => Err(
                EnvError::invalid(name, format!("not an http(s) URL: {url:?}")),
            ),
            url => Ok(url.map(|url| url.trim_end_matches('/'))),
        }
    }

    /// `name` as JSON, if set.
    pub fn json<T: DeserializeOwned>(&self, name: &'static str) -> Result<Option<T>, EnvError> {
        self.get(name)
            .map(|v| {
                serde_json::from_str(v).map_err(|e| EnvError::invalid(name, format!("{e} in {v}")))
            })
            .transpose()
    }
}

/// The usual spellings of a boolean: `true/false`, `1/0`, `yes/no`, `on/off`, in any case.
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

thread_local! {
    static READS: RefCell<Option<BTreeSet<String>>> = const { RefCell::new(None) };
}

/// Runs `load` and returns, with its result, the names of the variables [`Vars`] was asked
/// for meanwhile on this thread: how the tests in `crates/deploy-check` prove each binary's
/// `env_vars()` list complete.
pub fn record_reads<T>(load: impl FnOnce() -> T) -> (T, BTreeSet<String>) {
    let outer = READS.with(|reads| reads.replace(Some(BTreeSet::new())));
    let value = load();
    let names = READS.with(|reads| reads.replace(outer)).unwrap_or_default();
    (value, names)
}

fn note_read(name: &str) {
    READS.with(|reads| {
        if let Some(names) = reads.borrow_mut().as_mut() {
            names.insert(name.to_ascii_uppercase());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_trim_treat_blank_as_unset_and_name_the_variable() {
        let vars: Vars = [("PORT", " 8080 "), ("EMPTY", "  "), ("LIST", "[1,2]")]
            .into_iter()
            .collect();
        assert_eq!(vars.get("port"), Some("8080"));
        assert_eq!(vars.get("EMPTY"), None);
        assert_eq!(vars.parse_or::<u16>("PORT", 1), Ok(8080));
        assert_eq!(vars.parse_or::<u16>("EMPTY", 1), Ok(1));
        assert_eq!(vars.json::<Vec<u8>>("LIST"), Ok(Some(vec![1, 2])));
        let err = vars.parse::<u8>("PORT").unwrap_err();
        assert_eq!(err.name(), "PORT");
        assert!(
            err.to_string().starts_with("setting PORT is invalid:"),
            "{err}"
        );
        assert_eq!(
            vars.require("EMPTY", "PORT").unwrap_err().to_string(),
            "setting EMPTY is missing (required with PORT)"
        );
        assert_eq!(vars.first_of(&["EMPTY", "PORT"]), Some("8080"));
    }

    #[test]
    fn flags_and_urls() {
        let vars: Vars = [
            ("ON", "Yes"),
            ("OFF", "0"),
            ("BAD", "maybe"),
            ("URL", "http://127.0.0.1:9/v3/"),
            ("HOST", "pay.example.com"),
        ]
        .into_iter()
        .collect();
        assert_eq!(vars.flag("ON"), Ok(Some(true)));
        assert_eq!(vars.flag("OFF"), Ok(Some(false)));
        assert_eq!(vars.flag("UNSET"), Ok(None));
        assert_eq!(
            vars.flag("BAD").unwrap_err().to_string(),
            "setting BAD is invalid: expected true or false, got \"maybe\""
        );
        assert_eq!(vars.url("URL"), Ok(Some("http://127.0.0.1:9/v3")));
        assert_eq!(vars.url("UNSET"), Ok(None));
        assert_eq!(vars.url("HOST").unwrap_err().name(), "HOST");
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let long = "x".repeat(MIN_SECRET_CHARS);
        let vars: Vars = [
            ("SHORT", "short-token"),
            ("LONG", long.as_str()),
            ("SAME", long.as_str()),
        ]
        .into_iter()
        .collect();
        let err = vars.strong_secret("SHORT").unwrap_err().to_string();
        assert!(
            err.starts_with("setting SHORT is invalid: must be at least 32"),
            "{err}"
        );
        assert!(vars.strong_secret("LONG").unwrap().is_some());
        assert!(vars.strong_secret("UNSET").unwrap().is_none());
        assert_eq!(
            vars.distinct("LONG", "SAME").unwrap_err().to_string(),
            "setting SAME is invalid: must differ from LONG"
        );
        assert!(vars.distinct("LONG", "SHORT").is_ok());
        assert!(vars.distinct("UNSET", "OTHER_UNSET").is_ok());
        assert!(
            !format!("{vars:?}").contains(&long),
            "values are not printed"
        );
    }

    #[test]
    fn reads_are_recorded_in_upper_case_inside_record_reads_only() {
        let vars: Vars = [("A", "1")].into_iter().collect();
        let ((), reads) = record_reads(|| {
            vars.get("a");
            let _ = vars.parse::<u8>("UNSET_B");
        });
        assert_eq!(
            reads,
            BTreeSet::from(["A".to_owned(), "UNSET_B".to_owned()])
        );
        let ((), inner) = record_reads(|| {
            vars.get("C");
        });
        assert_eq!(inner, BTreeSet::from(["C".to_owned()]));
    }
}
