//! The deployment files against the settings code. One list of variables — each binary's
//! `env_vars()`, joined from the lists its settings modules keep next to the code that reads
//! them — is proved against that code (every variable read is listed, every listed default is
//! the code's), then checked against `.env.example`, `docker-compose.yml`, `deploy/` and the
//! README's configuration table (`ACP_WRITE_README=1` rewrites the table).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use domain::env::{EnvVar, record_reads};
use serde_norway::Value;
use service_kit::settings::Source;

type Load = fn(&Source) -> Result<String, String>;

/// A binary, the variables it says it reads, and its settings loader (`Debug` of the result).
struct Binary {
    name: &'static str,
    vars: Vec<EnvVar>,
    load: Load,
    /// Read by the settings code but ignored by this binary.
    ignored: &'static [&'static str],
}

fn debug<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> Result<String, String> {
    r.map(|v| format!("{v:?}")).map_err(|e| e.to_string())
}

fn binaries() -> Vec<Binary> {
    vec![
        Binary {
            name: "api-gateway",
            vars: api_gateway::settings::env_vars(),
            load: |s| debug(api_gateway::Settings::load(s)),
            ignored: &[],
        },
        Binary {
            name: "payment-worker",
            vars: payment_worker::settings::env_vars(),
            load: |s| debug(payment_worker::Settings::load(s)),
            ignored: &[],
        },
        Binary {
            name: "marzban-sync",
            vars: marzban_sync::settings::env_vars(),
            load: |s| debug(marzban_sync::Settings::load(s)),
            ignored: &[],
        },
        Binary {
            name: "bot",
            vars: bot::settings::env_vars(),
            load: |s| debug(bot::Settings::load(s)),
            ignored: &[],
        },
        Binary {
            name: "standalone",
            vars: standalone::env_vars(),
            load: |s| debug(standalone::Settings::load(s)),
            ignored: standalone::IGNORED_VARS,
        },
    ]
}

/// The four binaries docker-compose.yml and deploy/systemd run.
const SERVICES: [&str; 4] = ["api-gateway", "payment-worker", "marzban-sync", "bot"];

/// Every feature on, so the settings code walks every branch that reads a variable.
fn sample() -> Vec<(&'static str, String)> {
    [
        ("DATABASE_URL", "postgres://acp:pw@postgres:5432/acp"),
        ("AMQP_URL", "amqp://acp:pw@rabbitmq:5672/%2f"),
        ("YOOKASSA_SHOP_ID", "100500"),
        ("YOOKASSA_SECRET_KEY", "live_secret"),
        ("YOOKASSA_RECEIPT_EMAIL", "receipts@example.com"),
        (
            "CRYPTO_WALLET_ADDRESS",
            "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t",
        ),
        ("TELEGRAM_BOT_TOKEN", "123456:bot-token"),
        ("API_SERVICE_TOKEN", &"s".repeat(40)),
        ("API_ADMIN_TOKEN", &"a".repeat(40)),
        ("CRYPTO_WEBHOOK_SECRET", &"c".repeat(40)),
        ("MARZBAN_URL", "http://marzban:8000"),
        ("MARZBAN_USERNAME", "admin"),
        ("MARZBAN_PASSWORD", "pw"),
        (
            "TELEGRAM_WEBHOOK_URL",
            "https://pay.example.com/telegram/webhook",
        ),
        ("TELEGRAM_WEBHOOK_SECRET", "secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

fn source(pairs: &[(&str, String)]) -> Source {
    Source::Map(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The field names of a serde struct (`CommonSettings` is read by serde, not through `Vars`).
fn serde_fields<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Error::custom("field names only"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Error::custom("field names only"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

#[test]
fn the_lists_name_every_variable_the_settings_code_reads_and_no_other() {
    let common: BTreeSet<String> = serde_fields::<service_kit::CommonSettings>()
        .iter()
        .map(|f| f.to_ascii_uppercase())
        .collect();
    let listed: BTreeSet<String> = service_kit::settings::COMMON_VARS
        .iter()
        .map(|v| v.name.to_owned())
        .collect();
    assert_eq!(common, listed, "CommonSettings' fields against COMMON_VARS");
    for binary in binaries() {
        let (loaded, reads) = record_reads(|| (binary.load)(&source(&sample())));
        loaded.unwrap_or_else(|e| panic!("{}: the sample settings fail: {e}", binary.name));
        let names: BTreeSet<String> = binary.vars.iter().map(|v| v.name.to_owned()).collect();
        let unlisted: Vec<_> = reads
            .iter()
            .filter(|r| !names.contains(*r) && !binary.ignored.contains(&r.as_str()))
            .collect();
        assert!(
            unlisted.is_empty(),
            "{} reads {unlisted:?}, which its env_vars() does not list: add each to the VARS of \
             the settings module that reads it, with its default",
            binary.name
        );
        let never_read: Vec<_> = names
            .iter()
            .filter(|n| !reads.contains(*n) && !common.contains(*n))
            .collect();
        assert!(
            never_read.is_empty(),
            "{} lists {never_read:?}, which its settings code never reads (with every feature \
             on): remove them, or extend sample() to reach them",
            binary.name
        );
    }
}

#[test]
fn every_listed_default_is_the_default_of_the_code() {
    for binary in binaries() {
        let base = sample();
        let expected = (binary.load)(&source(&base)).expect("sample settings load");
        for var in &binary.vars {
            let Some(default) = var.default else { continue };
            // Unset, the queue type falls back to the process environment's (the test suite
            // runs on classic queues), so setting it to the default is not a no-op here.
            if var.name == "AMQP_QUEUE_TYPE" || base.iter().any(|(k, _)| *k == var.name) {
                continue;
            }
            let mut with = base.clone();
            with.push((var.name, default.to_owned()));
            let got = (binary.load)(&source(&with))
                .unwrap_or_else(|e| panic!("{}: {}={default} fails: {e}", binary.name, var.name));
            assert_eq!(
                got, expected,
                "{}: setting {}={default} (its listed default) changes the settings, so the \
                 code's default differs",
                binary.name, var.name
            );
        }
        // The standalone default database differs from the services' required one.
        if binary.name == "standalone" {
            let without: Vec<_> = base
                .iter()
                .filter(|(k, _)| *k != "DATABASE_URL")
                .cloned()
                .collect();
            let got = (binary.load)(&source(&without)).expect("standalone without DATABASE_URL");
            assert!(got.contains("sqlite://data/acp.db"), "{got}");
        }
    }
}

/// `.env.example` as (name → (value, commented out)).
fn env_example() -> BTreeMap<String, (String, bool)> {
    let mut vars = BTreeMap::new();
    for line in read(".env.example").lines() {
        let (commented, line) = match line.strip_prefix('#') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let entry = vars
            .entry(name.to_owned())
            .or_insert((value.to_owned(), commented));
        if entry.1 && !commented {
            *entry = (value.to_owned(), commented);
        }
    }
    vars
}

#[test]
fn env_example_shows_every_variable_with_the_code_default() {
    let example = env_example();
    let binaries = binaries();
    let required: BTreeSet<&str> = binaries
        .iter()
        .flat_map(|b| b.vars.iter().filter(|v| v.required).map(|v| v.name))
        .collect();
    for binary in &binaries {
        for var in &binary.vars {
            let Some((value, _)) = example.get(var.name) else {
                panic!(".env.example lacks {} (read by {})", var.name, binary.name);
            };
            if let Some(default) = var.default
                && !value.is_empty()
                && !required.contains(var.name)
            {
                assert_eq!(
                    value, default,
                    ".env.example shows {}={value}, the code's default is {default}",
                    var.name
                );
            }
        }
    }
    // Every other line is a deployment setting docker-compose.yml uses.
    let compose = read("docker-compose.yml");
    let read_by_code: BTreeSet<&str> = binaries
        .iter()
        .flat_map(|b| b.vars.iter().map(|v| v.name))
        .collect();
    for name in example.keys() {
        assert!(
            read_by_code.contains(name.as_str()) || compose.contains(&format!("${{{name}")),
            ".env.example sets {name}, which neither the code nor docker-compose.yml reads"
        );
    }
}

fn compose() -> Value {
    let mut value: Value = serde_norway::from_str(&read("docker-compose.yml")).expect("yaml");
    value.apply_merge().expect("merge keys");
    value
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (str_of(k), str_of(v))).collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment as a list is not supported here: {other:?}"),
    }
}

/// A list, or one scalar as a list of one (`env_file: .env`).
fn list(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s.iter().map(str_of).collect(),
        Value::Null => Vec::new(),
        scalar => vec![str_of(scalar)],
    }
}

/// The compose services running one of our binaries: (service name, binary, migrate-only).
fn app_services(compose: &Value) -> Vec<(String, String, bool)> {
    let services = compose["services"].as_mapping().expect("services");
    services
        .iter()
        .filter_map(|(name, service)| {
            let command = list(&service["command"]);
            let binary = command.first()?.clone();
            SERVICES.contains(&binary.as_str()).then(|| {
                let migrate = command.iter().any(|a| a == "--migrate-only");
                (str_of(name), binary, migrate)
            })
        })
        .collect()
}

fn vars_of(binary: &str) -> Vec<EnvVar> {
    binaries()
        .into_iter()
        .find(|b| b.name == binary)
        .expect("binary")
        .vars
}

#[test]
fn compose_gives_every_service_what_it_needs_and_no_loopback_urls() {
    let compose = compose();
    let example = env_example();
    let apps = app_services(&compose);
    for binary in SERVICES {
        assert!(
            apps.iter().any(|(_, b, m)| b == binary && !m),
            "docker-compose.yml runs no {binary}"
        );
    }
    for (name, binary, migrate) in &apps {
        let service = &compose["services"][name.as_str()];
        assert!(
            list(&service["env_file"]).contains(&".env".to_owned()),
            "{name} does not read .env"
        );
        assert!(
            service["build"]["dockerfile"].as_str() == Some("deploy/Dockerfile"),
            "{name} is not built from deploy/Dockerfile"
        );
        let env = environment(service);
        let vars = vars_of(binary);
        for var in vars.iter().filter(|v| v.required) {
            if *migrate && var.name != "DATABASE_URL" {
                continue;
            }
            let value = env.get(var.name).unwrap_or_else(|| {
                panic!(
                    "{name} lacks {}, which {binary} requires: set it in `environment:` (a \
                     secret as ${{{}:?…}}, so compose stops with a message)",
                    var.name, var.name
                )
            });
            assert!(
                !value.is_empty() && !value.starts_with(&format!("${{{}:-", var.name)),
                "{name}: {}={value} may be empty",
                var.name
            );
        }
        // What the container sees: .env (from .env.example) under `environment:`.
        for var in &vars {
            let value = env
                .get(var.name)
                .cloned()
                .or_else(|| {
                    example
                        .get(var.name)
                        .filter(|(_, c)| !c)
                        .map(|(v, _)| v.clone())
                })
                .or_else(|| var.default.map(str::to_owned))
                .unwrap_or_default();
            if value.contains("://") {
                assert!(
                    !value.contains("127.0.0.1") && !value.contains("localhost"),
                    "{name} gets {}={value}: inside a container that is the container itself; \
                     name the service",
                    var.name
                );
            }
        }
    }
}

#[test]
fn compose_migrates_first_keeps_its_data_and_publishes_no_ops_port() {
    let compose = compose();
    let services = &compose["services"];
    let apps = app_services(&compose);
    let migrates: Vec<_> = apps.iter().filter(|(_, _, m)| *m).collect();
    assert_eq!(migrates.len(), 1, "one migration step: {apps:?}");
    let migrate = &migrates[0].0;
    assert_eq!(str_of(&services[migrate.as_str()]["restart"]), "no");
    assert_eq!(
        services[migrate.as_str()]["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    for (name, binary, is_migrate) in &apps {
        let service = &services[name.as_str()];
        if *is_migrate {
            continue;
        }
        assert_eq!(
            service["depends_on"][migrate.as_str()]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name} must wait for {migrate}"
        );
        let env = environment(service);
        assert_eq!(
            env.get("RUN_MIGRATIONS").map(String::as_str),
            Some("false"),
            "{name} migrates itself"
        );
        // Logs on a volume, at the LOG_DIR the service writes.
        let log_dir = env.get("LOG_DIR").expect("LOG_DIR set in compose");
        assert!(
            list(&service["volumes"])
                .iter()
                .any(|v| v.ends_with(&format!(":{log_dir}"))),
            "{name} has no volume at {log_dir}"
        );
        // Health and metrics stay inside: its ops port is nowhere published.
        let ops_var = vars_of(binary)
            .into_iter()
            .find(|v| v.name.ends_with("_OPS_BIND"))
            .expect("an ops variable");
        let ops = env
            .get(ops_var.name)
            .map(String::as_str)
            .or(ops_var.default)
            .expect("ops address");
        let port = ops.rsplit(':').next().expect("port");
        assert!(
            list(&service["ports"]).is_empty(),
            "{name} publishes {:?}",
            list(&service["ports"])
        );
        for (other, s) in services.as_mapping().expect("services") {
            for published in list(&s["ports"]) {
                assert!(
                    !published.split(':').any(|p| p == port),
                    "{} publishes {published}, {name}'s ops port",
                    str_of(other)
                );
            }
        }
    }
    // Durable data: named volumes for PostgreSQL and RabbitMQ, RabbitMQ under a fixed name.
    let volumes = compose["volumes"].as_mapping().expect("volumes");
    for (service, path) in [
        ("postgres", "/var/lib/postgresql/data"),
        ("rabbitmq", "/var/lib/rabbitmq"),
    ] {
        let mount = list(&services[service]["volumes"])
            .into_iter()
            .find(|v| v.ends_with(&format!(":{path}")))
            .unwrap_or_else(|| panic!("{service} keeps {path} on no volume"));
        let volume = mount.split(':').next().expect("name");
        assert!(
            volumes.contains_key(volume),
            "{volume} is not a named volume"
        );
    }
    assert!(services["rabbitmq"]["hostname"].as_str().is_some());
    // Only Caddy faces the world; observability is opt-in and on loopback.
    for (name, service) in services.as_mapping().expect("services") {
        let name = str_of(name);
        for published in list(&service["ports"]) {
            assert!(
                name == "caddy" || published.starts_with("127.0.0.1:"),
                "{name} publishes {published} to the world"
            );
        }
    }
    for name in ["prometheus", "grafana"] {
        assert_eq!(
            list(&services[name]["profiles"]),
            ["observability"],
            "{name}"
        );
    }
}

#[test]
fn caddy_fronts_only_the_public_routes_and_is_the_trusted_proxy() {
    let compose = compose();
    let services = &compose["services"];
    let caddy_ip = str_of(&services["caddy"]["networks"]["backend"]["ipv4_address"]);
    let gateway = environment(&services["api-gateway"]);
    assert_eq!(gateway.get("TRUSTED_PROXIES"), Some(&caddy_ip));
    let mut published = list(&services["caddy"]["ports"]);
    published.sort();
    assert_eq!(published, ["443:443", "443:443/udp", "80:80"]);
    let caddyfile = read("deploy/Caddyfile");
    let config: String = caddyfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(config.contains("{$PUBLIC_HOST}"));
    for route in ["/webhook/*", "/api/*"] {
        assert!(
            config.contains(&format!(
                "handle {route} {{\n\t\treverse_proxy api-gateway:8080"
            )),
            "Caddy does not forward {route} to the gateway"
        );
    }
    assert!(config.contains(&format!(
        "handle {} {{\n\t\treverse_proxy bot:",
        "/telegram/webhook"
    )));
    assert!(!config.contains("/health") && !config.contains("/metrics"));
    let bot_env = environment(&services["bot"]);
    let bind = bot_env
        .get("TELEGRAM_WEBHOOK_BIND")
        .expect("bot webhook bind");
    assert!(config.contains(&format!("bot:{}", bind.rsplit(':').next().expect("port"))));
}

#[test]
fn prometheus_discovers_every_replica_of_every_service() {
    let prometheus: Value =
        serde_norway::from_str(&read("deploy/prometheus.yml")).expect("prometheus.yml");
    let jobs = prometheus["scrape_configs"].as_sequence().expect("jobs");
    for binary in SERVICES {
        let ops = vars_of(binary)
            .into_iter()
            .find(|v| v.name.ends_with("_OPS_BIND"))
            .and_then(|v| v.default)
            .expect("ops default");
        let port: u64 = ops.rsplit(':').next().expect("port").parse().expect("port");
        let found = jobs.iter().any(|job| {
            job["dns_sd_configs"].as_sequence().is_some_and(|sds| {
                sds.iter().any(|sd| {
                    list(&sd["names"]) == [binary]
                        && sd["type"].as_str() == Some("A")
                        && sd["port"].as_u64() == Some(port)
                })
            })
        });
        assert!(
            found,
            "no DNS discovery of {binary}:{port} in deploy/prometheus.yml"
        );
    }
}

#[test]
fn the_image_is_pinned_small_and_unprivileged() {
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"');
    let dockerfile = read("deploy/Dockerfile");
    assert!(
        dockerfile.contains(&format!("ARG RUST_VERSION={rust_version}\n")),
        "deploy/Dockerfile's toolchain is not the workspace's rust-version {rust_version}"
    );
    assert!(dockerfile.contains("--mount=type=cache,target=/src/target"));
    for binary in SERVICES {
        assert!(
            dockerfile.contains(&format!("-p {binary} ")),
            "the image lacks {binary}"
        );
    }
    if root().join("crates/acpctl/Cargo.toml").exists() {
        assert!(dockerfile.contains("-p acpctl "), "the image lacks acpctl");
    }
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert_ne!(user.trim(), "root");
    let ignore = read(".dockerignore");
    for entry in ["target/", ".git/", ".env"] {
        assert!(
            ignore.lines().any(|l| l == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

#[test]
fn systemd_units_read_one_env_file_and_start_after_the_migrations() {
    let migrate = read("deploy/systemd/acp-migrate.service");
    assert!(migrate.contains("Type=oneshot"));
    assert!(migrate.contains("ExecStart=/usr/local/bin/api-gateway --migrate-only"));
    let env_file = "EnvironmentFile=/etc/acp/acp.env";
    assert!(migrate.contains(env_file));
    for binary in SERVICES {
        let unit = read(&format!("deploy/systemd/acp-{binary}.service"));
        assert!(unit.contains(env_file), "acp-{binary}: {env_file}");
        assert!(unit.contains(&format!("ExecStart=/usr/local/bin/{binary}\n")));
        assert!(
            unit.contains("Requires=acp-migrate.service"),
            "acp-{binary}"
        );
        assert!(
            unit.lines()
                .any(|l| l.starts_with("After=") && l.contains("acp-migrate.service")),
            "acp-{binary} does not start after the migrations"
        );
    }
}

/// The README's table of every variable, generated from the lists.
fn env_table() -> String {
    let binaries = binaries();
    let mut names: Vec<&str> = Vec::new();
    for binary in &binaries {
        for var in &binary.vars {
            if !names.contains(&var.name) {
                names.push(var.name);
            }
        }
    }
    let mut out =
        String::from("| variable | read by | default | required by |\n|---|---|---|---|\n");
    for name in names {
        let readers: Vec<(&str, &EnvVar)> = binaries
            .iter()
            .filter_map(|b| b.vars.iter().find(|v| v.name == name).map(|v| (b.name, v)))
            .collect();
        let read_by = if readers.len() == binaries.len() {
            "all".to_owned()
        } else {
            readers
                .iter()
                .map(|(b, _)| *b)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut defaults: Vec<(Option<&str>, Vec<&str>)> = Vec::new();
        for (binary, var) in &readers {
            match defaults.iter_mut().find(|(d, _)| *d == var.default) {
                Some((_, who)) => who.push(binary),
                None => defaults.push((var.default, vec![binary])),
            }
        }
        let show = |d: Option<&str>| d.map_or("—".to_owned(), |d| format!("`{d}`"));
        let default = match defaults.as_slice() {
            [(d, _)] => show(*d),
            many => many
                .iter()
                .map(|(d, who)| format!("{} ({})", show(*d), who.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        };
        let required: Vec<&str> = readers
            .iter()
            .filter(|(_, v)| v.required)
            .map(|(b, _)| *b)
            .collect();
        out.push_str(&format!(
            "| `{name}` | {read_by} | {default} | {} |\n",
            required.join(", ")
        ));
    }
    out
}

#[test]
fn the_readme_table_is_the_generated_one() {
    const BEGIN: &str = "<!-- env-table:begin (generated: ACP_WRITE_README=1 cargo test --workspace --test deploy) -->\n";
    const END: &str = "<!-- env-table:end -->";
    let readme = read("README.md");
    let start = readme
        .find(BEGIN)
        .expect("README has the table's begin marker")
        + BEGIN.len();
    let end = readme.find(END).expect("README has the table's end marker");
    let table = env_table();
    if std::env::var_os("ACP_WRITE_README").is_some() {
        let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
        std::fs::write(root().join("README.md"), updated).expect("write README.md");
        return;
    }
    assert!(
        readme[start..end] == table,
        "the README's configuration table is stale: run \
         ACP_WRITE_README=1 cargo test --workspace --test deploy"
    );
}
