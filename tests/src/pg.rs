//! PostgreSQL servers of a test's own: one to stop and start, or a primary with a streaming
//! standby to fail over.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{TempDir, free_port};

/// A PostgreSQL server of the test's own (initdb in a temporary directory, its own port), so a
/// test can stop and start it without disturbing the others. Needs root (the server runs as the
/// `postgres` user) and PostgreSQL's server binaries.
pub struct PrivatePg {
    pub port: u16,
    dir: TempDir,
    bindir: PathBuf,
    /// `-c name=value` settings the server runs with.
    settings: Vec<String>,
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        PrivatePg::start_with(&[])
    }

    /// A new server running with these settings (`("synchronous_standby_names", "*")`).
    pub fn start_with(settings: &[(&str, &str)]) -> PrivatePg {
        let pg = PrivatePg::empty(settings);
        pg.initdb();
        pg.ctl("start");
        pg
    }

    /// A server that speaks TLS with a certificate of `pki` (for 127.0.0.1 and localhost) and
    /// refuses connections without it. The role `certified` must also show a client
    /// certificate of `pki`.
    pub fn start_tls(pki: &crate::Pki) -> PrivatePg {
        let mut pg = PrivatePg::empty(&[]);
        pg.initdb();
        // The allocator's identity has a server certificate for 127.0.0.1 and localhost.
        let files = pki.files("allocator");
        let copy = |from: &std::path::Path, name: &str| {
            let to = pg.dir.0.join(name);
            std::fs::copy(from, &to).expect("copy a TLS file");
            let owned = Command::new("chown")
                .args(["postgres:postgres", to.to_str().unwrap()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(owned, "chown {}", to.display());
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            to.display().to_string()
        };
        let (cert, key, ca) = (
            copy(&files.cert, "server.pem"),
            copy(&files.key, "server-key.pem"),
            copy(&files.ca, "ca.pem"),
        );
        std::fs::write(
            pg.data().join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certified 127.0.0.1/32 trust clientcert=verify-ca\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("write pg_hba.conf");
        pg.settings = vec![
            "ssl=on".into(),
            format!("ssl_cert_file='{cert}'"),
            format!("ssl_key_file='{key}'"),
            format!("ssl_ca_file='{ca}'"),
        ];
        pg.ctl("start");
        pg.query("CREATE ROLE certified LOGIN SUPERUSER");
        pg
    }

    /// A hot standby streaming from `primary` (pg_basebackup), started.
    pub fn standby_of(primary: &PrivatePg) -> PrivatePg {
        let pg = PrivatePg::empty(&[]);
        pg.as_postgres(&[
            pg.bindir.join("pg_basebackup").to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-D",
            pg.data().to_str().unwrap(),
            "-R",
            "-X",
            "stream",
            "--no-sync",
        ]);
        pg.ctl("start");
        pg
    }

    fn empty(settings: &[(&str, &str)]) -> PrivatePg {
        let bindir = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("initdb").exists())
                    .max()
            })
            .expect("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin/initdb) are missing: install postgresql (scripts/test does)");
        assert!(
            Command::new("id")
                .arg("-u")
                .output()
                .map(|o| o.stdout == b"0\n")
                .unwrap_or(false),
            "this test runs its own PostgreSQL server as the postgres user and needs root"
        );
        let dir = TempDir::new("ferrolb-pg");
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir.0)
            .status()
            .expect("chown");
        assert!(
            status.success(),
            "cannot hand {} to the postgres user",
            dir.0.display()
        );
        PrivatePg {
            port: free_port(),
            dir,
            bindir,
            settings: settings.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        }
    }

    fn initdb(&self) {
        self.as_postgres(&[
            self.bindir.join("initdb").to_str().unwrap(),
            "-D",
            self.data().to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]);
    }

    fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    fn as_postgres(&self, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .output()
            .expect("runuser");
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, mode: &str, action: &str) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.dir.0.display()
        );
        for s in &self.settings {
            opts.push_str(&format!(" -c {s}"));
        }
        let log = self.dir.0.join("server.log");
        self.as_postgres(&[
            self.bindir.join("pg_ctl").to_str().unwrap(),
            "-D",
            self.data().to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-m",
            mode,
            "-w",
            action,
        ]);
    }

    /// `pg_ctl start`, `stop` (fast shutdown: connections are cut) or `restart`.
    pub fn ctl(&self, action: &str) {
        self.pg_ctl("fast", action);
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`).
    pub fn kill(&self) {
        self.pg_ctl("immediate", "stop");
    }

    /// Promotes a standby and waits until it takes writes; returns how long PostgreSQL took.
    pub fn promote(&self) -> Duration {
        let started = Instant::now();
        self.pg_ctl("fast", "promote");
        started.elapsed()
    }

    /// One value from `sql` on this server's `postgres` database.
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|e| panic!("psql on port {}: {e}", self.port))
    }

    /// As [`PrivatePg::query`], or what PostgreSQL said.
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([&self.url(), "-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .expect("psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// Waits until `sql` answers `want`.
    pub fn wait_for(&self, sql: &str, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.query(sql);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql} on port {} says {got:?}, not {want:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A primary whose commits wait for its streaming standby (`synchronous_standby_names = '*'`),
/// as a deployment that must lose nothing on failover runs.
pub struct SyncPair {
    pub primary: PrivatePg,
    pub standby: PrivatePg,
}

impl SyncPair {
    pub fn start() -> SyncPair {
        let primary = PrivatePg::start_with(&[("synchronous_standby_names", "'*'")]);
        let standby = PrivatePg::standby_of(&primary);
        primary.wait_for(
            "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
            "sync",
            Duration::from_secs(30),
        );
        SyncPair { primary, standby }
    }

    /// Both hosts in one URL, the primary first.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
            self.primary.port, self.standby.port
        )
    }
}
