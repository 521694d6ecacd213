//! The environment variables a binary reads, as data: each settings module lists its own
//! ([`EnvVar`]), each binary joins the lists of the modules it loads (`env_vars()` next to its
//! `Settings`). `crates/deploy-check` proves the lists against the settings code (every variable
//! read is listed, every listed default is the code's) and checks `.env.example`,
//! `docker-compose.yml` and the README's configuration table against them.

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
