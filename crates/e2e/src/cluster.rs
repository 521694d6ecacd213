//! Starts the system as separate processes — the sandbox emulators, the gateway, any number of
//! workers and marzban-syncs, and the bot — on PostgreSQL and RabbitMQ, with one shared
//! environment, each process logging to its own file. Processes can be killed (SIGTERM or
//! SIGKILL) and restarted, for end-to-end and fault-injection runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use service_kit::testing::{free_addr, http_get};
use tokio::process::{Child, Command};

/// A TRON address with a valid checksum, for the crypto provider's wallet.
pub const WALLET: &str = "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE";
/// The Telegram ids the bot treats as admins.
pub const ADMIN_ID: i64 = 900_001;
pub const BOT_TOKEN: &str = "123456:TEST-sandbox-token";
/// The payment provider's token for card payments inside Telegram (test mode, as @BotFather
/// issues them).
pub const PROVIDER_TOKEN: &str = "381764678:TEST:sandbox";
pub const SERVICE_TOKEN: &str = "e2e-service-token-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef012";
pub const CRYPTO_SECRET: &str = "e2e-crypto-webhook-secret-0123456789";
pub const SHOP_ID: &str = "100500";
pub const SHOP_SECRET: &str = "test_sandbox_secret";
/// YooKassa notifications come from this loopback address, the only one in the allow-list.
pub const NOTIFY_FROM: &str = "127.0.0.2";

/// Where the workspace's binaries are: `ACP_BIN_DIR`, else the cargo target directory this
/// test or tool runs from.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("ACP_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test executables live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// One service process.
pub struct Proc {
    pub name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    /// `host:port` of its HTTP server: the gateway's public port (webhooks, API), the ops
    /// address of the other services, the YooKassa emulator for the sandbox.
    pub addr: String,
    /// `host:port` of its ops server (`/health/*`, `/metrics`; `*_OPS_BIND`): for every
    /// service but the gateway the same as `addr`.
    pub ops_addr: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(
        name: &str,
        bin: &str,
        env: Vec<(String, String)>,
        (addr, ops_addr): (String, String),
        dir: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            bin: bin_dir().join(bin),
            env,
            addr,
            ops_addr,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts the process (again); its output is appended to its log file.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if !self.bin.exists() {
            bail!(
                "{} not found: build the workspace first (cargo build --workspace --bins)",
                self.bin.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/health/ready` on the ops address answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited with {status}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if let Ok((200, _)) = http_get(&self.ops_addr, "/health/ready").await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a TCP connection to the address succeeds (the sandbox has no health route).
    pub async fn wait_listening(addr: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!("nothing listens on {addr} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// SIGKILL: no chance to clean up, like a crash or an OOM kill.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await?;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("no exit within 30 s of SIGTERM")??;
        if !status.success() {
            bail!("{} exited with {status} after SIGTERM", self.name);
        }
        Ok(())
    }

    /// Freezes the process (SIGSTOP): it holds its connections but uses no CPU until
    /// [`Proc::resume`].
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP").await
    }

    /// Lets a paused process run again (SIGCONT).
    pub async fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT").await
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill {signal} {pid} ({}) failed: {status}", self.name);
        }
        Ok(())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Resident set size and CPU seconds (user + system) from /proc, if running.
    pub fn usage(&self) -> Option<Usage> {
        let pid = self.child.as_ref()?.id()?;
        Usage::of(pid)
    }
}

/// Memory and CPU of a process, read from `/proc`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub cpu_seconds: f64,
}

impl Usage {
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces) start after ')'.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            rss_kib: field("VmRSS:"),
            peak_rss_kib: field("VmHWM:"),
            // Linux reports CPU time in clock ticks of 1/100 s on every mainstream config.
            cpu_seconds: ticks as f64 / 100.0,
        })
    }
}

/// The panel marzban-sync provisions: the sandbox runs its emulator (`PANEL_KIND`) and the
/// services get its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PanelKind {
    #[default]
    Marzban,
    Pasarguard,
    Remnawave,
}

impl PanelKind {
    pub const ALL: [Self; 3] = [Self::Marzban, Self::Pasarguard, Self::Remnawave];

    /// `PANEL` (`marzban` when unset or empty), as `make demo`, the tests and loadgen read it.
    pub fn from_env() -> anyhow::Result<Self> {
        std::env::var("PANEL").unwrap_or_default().parse()
    }

    /// The `PANEL_KIND` value, also the emulator's control path (`/sandbox/<name>/…`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Marzban => "marzban",
            Self::Pasarguard => "pasarguard",
            Self::Remnawave => "remnawave",
        }
    }

    /// The services' settings for this panel's emulator (its default credentials, group and
    /// squad) at `url`.
    pub fn env(self, url: &str) -> Vec<(&'static str, String)> {
        let url = url.to_owned();
        match self {
            Self::Marzban => vec![
                ("MARZBAN_URL", url),
                ("MARZBAN_USERNAME", "admin".into()),
                ("MARZBAN_PASSWORD", "admin-password".into()),
            ],
            Self::Pasarguard => vec![
                ("PANEL_URL", url),
                (
                    "PASARGUARD_API_KEY",
                    sandbox::pasarguard::DEFAULT_API_KEY.into(),
                ),
                ("PASARGUARD_GROUP_IDS", "1".into()),
            ],
            Self::Remnawave => vec![
                ("PANEL_URL", url),
                ("REMNAWAVE_TOKEN", sandbox::remnawave::DEFAULT_TOKEN.into()),
                ("REMNAWAVE_SQUADS", sandbox::remnawave::DEFAULT_SQUAD.into()),
            ],
        }
    }
}

impl std::str::FromStr for PanelKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "" | "marzban" => Ok(Self::Marzban),
            "pasarguard" => Ok(Self::Pasarguard),
            "remnawave" => Ok(Self::Remnawave),
            other => bail!("PANEL={other}: use marzban, pasarguard or remnawave"),
        }
    }
}

impl std::fmt::Display for PanelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How many of each service to run, on which panel.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub workers: usize,
    pub syncs: usize,
    pub panel: PanelKind,
    /// Extra variables for every process (override the defaults).
    pub env: Vec<(String, String)>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            syncs: 1,
            panel: PanelKind::default(),
            env: Vec::new(),
        }
    }
}

/// Addresses of the emulators (all in the one sandbox process).
#[derive(Debug, Clone)]
pub struct SandboxUrls {
    pub yookassa: String,
    pub telegram: String,
    pub tron: String,
    /// The panel emulator's base URL (whichever panel `panel` names).
    pub marzban: String,
    pub panel: PanelKind,
}

impl SandboxUrls {
    /// A route of the panel emulator's control API: `/sandbox/<panel>/<path>`.
    pub fn panel_control(&self, path: &str) -> String {
        format!("{}/sandbox/{}/{path}", self.marzban, self.panel.name())
    }
}

/// The running system.
pub struct Cluster {
    pub dir: PathBuf,
    pub db: testkit::TestDb,
    pub prefix: String,
    pub sandbox: Proc,
    pub sandbox_urls: SandboxUrls,
    pub gateway: Proc,
    pub workers: Vec<Proc>,
    pub syncs: Vec<Proc>,
    pub bot: Proc,
    /// Retry schedules set through `*_RETRY_DELAYS_MS` (their delay queues are deleted at stop).
    retry: Vec<messaging::RetryPolicy>,
}

impl Cluster {
    /// A fresh database and topology prefix, the sandbox, then the services; returns when
    /// every service answers `/health/ready` (on its ops address).
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Self> {
        let db = testkit::TestDb::try_new().await?;
        let prefix = testkit::unique_prefix("e2e");
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let [yookassa, telegram, tron, marzban, gateway] =
            [(); 5].map(|()| free_addr().unwrap_or_default());
        let sandbox_urls = SandboxUrls {
            yookassa: format!("http://{yookassa}"),
            telegram: format!("http://{telegram}"),
            tron: format!("http://{tron}"),
            marzban: format!("http://{marzban}"),
            panel: config.panel,
        };
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", db.url.clone()),
            ("AMQP_URL", testkit::amqp_url()),
            ("AMQP_PREFIX", prefix.clone()),
            ("LOG_DIR", dir.join("logs").display().to_string()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            // YooKassa: the emulator's test shop; notifications only from NOTIFY_FROM.
            ("YOOKASSA_SHOP_ID", SHOP_ID.to_owned()),
            ("YOOKASSA_SECRET_KEY", SHOP_SECRET.to_owned()),
            ("YOOKASSA_TEST_MODE", "true".to_owned()),
            ("YOOKASSA_API_URL", format!("{}/v3", sandbox_urls.yookassa)),
            ("YOOKASSA_ALLOWED_IPS", format!("{NOTIFY_FROM}/32")),
            ("YOOKASSA_RETRY_INITIAL_MS", "100".to_owned()),
            ("YOOKASSA_TIMEOUT_MS", "5000".to_owned()),
            ("SANDBOX_YOOKASSA_BIND", yookassa.clone()),
            (
                "SANDBOX_YOOKASSA_WEBHOOK_URL",
                format!("http://{gateway}/webhook/payment/yookassa"),
            ),
            ("SANDBOX_YOOKASSA_NOTIFY_FROM", NOTIFY_FROM.to_owned()),
            // Telegram.
            ("TELEGRAM_BOT_TOKEN", BOT_TOKEN.to_owned()),
            ("TELEGRAM_API_URL", sandbox_urls.telegram.clone()),
            ("TELEGRAM_PAYMENT_PROVIDER_TOKEN", PROVIDER_TOKEN.to_owned()),
            ("SANDBOX_TELEGRAM_BIND", telegram.clone()),
            ("ADMIN_TELEGRAM_IDS", ADMIN_ID.to_string()),
            // Crypto.
            ("CRYPTO_WALLET_ADDRESS", WALLET.to_owned()),
            ("CRYPTO_NETWORK", "TRC20".to_owned()),
            ("TRONGRID_API_URL", sandbox_urls.tron.clone()),
            ("CRYPTO_WEBHOOK_SECRET", CRYPTO_SECRET.to_owned()),
            ("CRYPTO_POLL_INTERVAL_SECONDS", "1".to_owned()),
            ("SANDBOX_TRON_BIND", tron.clone()),
            // The panel (its settings are added below).
            ("PANEL_KIND", config.panel.name().to_owned()),
            ("SANDBOX_MARZBAN_BIND", marzban.clone()),
            // Gateway and the bot's way to it.
            ("GATEWAY_BIND", gateway.clone()),
            ("GATEWAY_URL", format!("http://{gateway}")),
            ("API_SERVICE_TOKEN", SERVICE_TOKEN.to_owned()),
            ("API_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ]
        .into_iter()
        .chain(config.panel.env(&sandbox_urls.marzban))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let retry = config
            .env
            .iter()
            .filter(|(key, _)| key.ends_with("_RETRY_DELAYS_MS"))
            .filter_map(|(_, delays)| delays.parse::<messaging::RetryPolicy>().ok())
            .collect();
        for (key, value) in config.env {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }

        let mut sandbox = Proc::new(
            "sandbox",
            "sandbox",
            env.clone(),
            (yookassa.clone(), yookassa.clone()),
            &dir,
        );
        sandbox.start()?;
        for addr in [&yookassa, &telegram, &tron, &marzban] {
            Proc::wait_listening(addr, Duration::from_secs(30)).await?;
        }

        // Each service's ops server (health, metrics) on a free address of its own.
        let service = |name: String, bin: &str, ops_var: &str, public: Option<String>| {
            let ops = free_addr().unwrap_or_default();
            let mut env = env.clone();
            env.retain(|(k, _)| k != ops_var);
            env.push((ops_var.to_owned(), ops.clone()));
            let addr = public.unwrap_or_else(|| ops.clone());
            Proc::new(&name, bin, env, (addr, ops), &dir)
        };
        let mut gateway = service(
            "gateway".into(),
            "api-gateway",
            "GATEWAY_OPS_BIND",
            Some(gateway),
        );
        let mut workers = (0..config.workers)
            .map(|i| {
                service(
                    format!("worker-{i}"),
                    "payment-worker",
                    "WORKER_OPS_BIND",
                    None,
                )
            })
            .collect::<Vec<_>>();
        let mut syncs = (0..config.syncs)
            .map(|i| {
                service(
                    format!("marzban-sync-{i}"),
                    "marzban-sync",
                    "MARZBAN_SYNC_OPS_BIND",
                    None,
                )
            })
            .collect::<Vec<_>>();
        let mut bot = service("bot".into(), "bot", "BOT_OPS_BIND", None);

        // The gateway migrates the database and upserts the tariffs; the others follow.
        gateway.start()?;
        gateway.wait_ready(Duration::from_secs(60)).await?;
        for proc in workers.iter_mut().chain(syncs.iter_mut()).chain([&mut bot]) {
            proc.start()?;
        }
        for proc in workers.iter_mut().chain(syncs.iter_mut()).chain([&mut bot]) {
            proc.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(Self {
            dir,
            db,
            prefix,
            sandbox,
            sandbox_urls,
            gateway,
            workers,
            syncs,
            bot,
            retry,
        })
    }

    /// The emulators' control APIs.
    pub fn sandbox_client(&self) -> crate::sandbox_client::SandboxClient {
        crate::sandbox_client::SandboxClient::new(self.sandbox_urls.clone())
    }

    /// The consumers of the event pipeline: workers, syncs and the bot (everything after the
    /// gateway).
    pub fn consumers(&self) -> impl Iterator<Item = &Proc> {
        self.workers
            .iter()
            .chain(self.syncs.iter())
            .chain([&self.bot])
    }

    /// Every service process (not the sandbox).
    pub fn services_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        [&mut self.gateway]
            .into_iter()
            .chain(self.workers.iter_mut())
            .chain(self.syncs.iter_mut())
            .chain([&mut self.bot])
    }

    /// Stops the services gracefully (checking each exits 0), then the sandbox, then removes
    /// the broker topology.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for proc in self.services_mut() {
            proc.terminate().await?;
        }
        self.sandbox.kill9().await?;
        service_kit::testing::delete_system_topology_with(
            &testkit::amqp_url(),
            &self.prefix,
            &self.retry,
        )
        .await?;
        Ok(())
    }
}
