//! The home-lab scenario in a network lab: the allocator in the router's namespace (embedded
//! store), an announcer and a small HTTP server on each of the three nodes, and the client that
//! reaches the scenario's 192.168.1.0/24 addresses on its LAN. Used by the layer-2 tests, the
//! failover and ARP benchmarks, and the demo. Everything stays inside the lab's namespaces.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::{Lab, TempDir, allocate_many, bin, channel, service, test_pki};

/// The fake Kubernetes API server inside the lab's router, driven over its standard input.
pub struct LabKube {
    child: Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl LabKube {
    fn command(&mut self, line: &str) -> Value {
        use std::io::Write;
        writeln!(self.input, "{line}").expect("fake-kube takes commands");
        let mut answer = String::new();
        self.output
            .read_line(&mut answer)
            .expect("fake-kube answers");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("fake-kube said {answer:?}: {e}"))
    }

    /// Creates or replaces an object in `collection` (an API path such as `/api/v1/services`).
    pub fn put(&mut self, collection: &str, obj: &Value) -> Value {
        self.command(&format!("put {collection} {obj}"))
    }

    pub fn get(&mut self, collection: &str, namespace: &str, name: &str) -> Value {
        self.command(&format!("get {collection} {namespace} {name}"))
    }

    pub fn delete(&mut self, collection: &str, namespace: &str, name: &str) -> Value {
        self.command(&format!("delete {collection} {namespace} {name}"))
    }

    pub fn list(&mut self, collection: &str) -> Vec<Value> {
        match self.command(&format!("list {collection}")) {
            Value::Array(items) => items,
            other => panic!("fake-kube list {collection}: {other}"),
        }
    }
}

impl Drop for LabKube {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// The allocator's gRPC endpoint inside the lab.
pub const SERVER: &str = "https://10.250.0.1:7470";
/// The home-lab scenario's cluster and Service.
pub const CLUSTER: &str = "home";
pub const VIP: &str = "192.168.1.240";

/// A node's MAC in the lab.
pub fn mac(node: &str) -> &'static str {
    match node {
        "n1" => "02:fa:00:00:00:11",
        "n2" => "02:fa:00:00:00:12",
        "n3" => "02:fa:00:00:00:13",
        _ => "?",
    }
}

/// A node's IPv4 address in the lab.
pub fn node_address(node: &str) -> String {
    format!("10.250.0.{}", 10 + node[1..].parse::<u32>().unwrap_or(0))
}

/// The node a MAC belongs to.
pub fn node_of(mac: &str) -> Option<&'static str> {
    NODES
        .into_iter()
        .find(|n| self::mac(n) == mac.to_lowercase())
}

/// The scenario files: FERROLB_SCENARIOS, or ../shared/scenarios beside the repository.
pub fn scenarios() -> PathBuf {
    let dir = std::env::var("FERROLB_SCENARIOS").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/scenarios"),
        PathBuf::from,
    );
    assert!(
        dir.join("home-ip-pool.yaml").exists(),
        "the scenario files are not in {} (set FERROLB_SCENARIOS)",
        dir.display()
    );
    dir
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// How the lab is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// `kernel` or `userspace`.
    pub answerer: &'static str,
    pub allocator_args: Vec<String>,
    pub announcer_args: Vec<String>,
    /// A command the announcer runs under (e.g. `setpriv` with a container's credentials).
    pub announcer_wrapper: Vec<String>,
    /// A fixed lab name (the demo's, so that its script can always take it down); by default
    /// the prefix and the process id.
    pub lab_name: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            answerer: "kernel",
            allocator_args: vec![],
            announcer_args: vec![],
            announcer_wrapper: vec![],
            lab_name: None,
        }
    }
}

pub struct HomeLab {
    pub lab: Lab,
    pub dir: TempDir,
    options: Options,
    allocator: Option<Child>,
    announcers: BTreeMap<String, Child>,
    http: BTreeMap<String, Child>,
}

impl HomeLab {
    /// Builds the lab and starts the allocator, the announcers and the HTTP servers.
    pub fn up(prefix: &str, options: Options) -> HomeLab {
        let lab = match &options.lab_name {
            Some(name) => Lab::named(name),
            None => Lab::up(prefix),
        };
        let mut me = HomeLab {
            lab,
            dir: TempDir::new("ferrolb-home"),
            options,
            allocator: None,
            announcers: BTreeMap::new(),
            http: BTreeMap::new(),
        };
        // The client reaches the home network's addresses on its LAN.
        me.must(
            "client",
            &["ip", "route", "add", "192.168.1.0/24", "dev", "eth0"],
        );
        me.start_allocator();
        for n in NODES {
            me.start_announcer(n);
            let http = me.spawn(n, &bin("lab-http").to_string_lossy(), &[n], "http");
            me.http.insert(n.to_string(), http);
        }
        me
    }

    /// Starts a program in a host of the lab, its standard error in `<log>.log`.
    pub fn spawn(&self, host: &str, program: &str, args: &[&str], log: &str) -> Child {
        let file = std::fs::File::create(self.dir.0.join(format!("{log}.log")))
            .expect("log file in the lab's directory");
        Command::new("ip")
            .args(["netns", "exec", &format!("{}-{host}", self.lab.0), program])
            .args(args)
            .env("FERROLB_LOG", "info,ferrolb_announcer=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program} in {host}: {e}"))
    }

    /// Runs a command in a host of the lab and fails the test if it fails.
    pub fn must(&self, host: &str, cmd: &[&str]) -> String {
        let o = self.lab.run(host, cmd);
        assert!(o.status.success(), "{cmd:?} in {host}: {}", text(&o));
        text(&o)
    }

    pub fn start_allocator(&mut self) {
        let mut extra = self.options.allocator_args.clone();
        if !extra.iter().any(|a| a == "--tls-cert") {
            extra.extend(test_pki().allocator_args());
        }
        self.spawn_allocator(&extra);
        let start = Instant::now();
        while !self.ctl_output(&["pools", "list"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the allocator did not start: {}",
                self.log("allocator")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a server at the allocator's address with exactly these flags (its TLS among
    /// them), waiting only until it listens: the lab's clients may refuse to talk to it.
    pub fn start_allocator_as(&mut self, extra: &[String]) {
        self.spawn_allocator(extra);
        let start = Instant::now();
        while !self.log("allocator").contains("serving gRPC") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the server did not start: {}",
                self.log("allocator")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn_allocator(&mut self, extra: &[String]) {
        let data = self.dir.0.to_string_lossy().to_string();
        let mut args = vec![
            "--listen",
            "10.250.0.1:7470",
            "--metrics-listen",
            "10.250.0.1:7471",
            "--data-dir",
            &data,
        ];
        args.extend(extra.iter().map(String::as_str));
        let child = self.spawn(
            "router",
            &bin("ferrolb-allocator").to_string_lossy(),
            &args,
            "allocator",
        );
        self.allocator = Some(child);
    }

    /// The fake Kubernetes API server on 10.250.0.1:6443 in the router, MetalLB's CRDs
    /// installed, and a kubeconfig for it.
    pub fn start_kube(&self) -> LabKube {
        self.start_kube_with(&[])
    }

    /// The same with nothing installed, for `kubectl apply -f deploy/ferrolb-native.yaml`.
    pub fn start_kube_empty(&self) -> LabKube {
        self.start_kube_with(&["--empty"])
    }

    fn start_kube_with(&self, args: &[&str]) -> LabKube {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-router", self.lab.0)])
            .arg(bin("fake-kube"))
            .arg("10.250.0.1:6443")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fake-kube");
        let input = child.stdin.take().expect("fake-kube stdin");
        let output = BufReader::new(child.stdout.take().expect("fake-kube stdout"));
        let mut kube = LabKube {
            child,
            input,
            output,
        };
        // It answers once it serves.
        kube.command("list /api/v1/namespaces");
        std::fs::write(
            self.dir.0.join("kubeconfig"),
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://10.250.0.1:6443\n\
             users:\n- name: lab\n  user: {}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
             current-context: lab\n",
        )
        .expect("write the lab's kubeconfig");
        kube
    }

    /// The Kubernetes adapter in the router, for cluster `home`, against the lab's API server.
    pub fn start_adapter(&self) -> Child {
        self.start_adapter_with(&[])
    }

    /// The adapter with more flags (`--webhook-listen 127.0.0.1:443`: the address the lab's API
    /// server reaches the Service `ferrolb-webhook` at).
    pub fn start_adapter_with(&self, extra: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.0.join("adapter.log")).expect("adapter log");
        Command::new("ip")
            .args(["netns", "exec", &format!("{}-router", self.lab.0)])
            .arg(bin("ferrolb-k8s-adapter"))
            .args(["--allocator", SERVER, "--cluster", CLUSTER])
            .args(test_pki().args(&format!("cluster/{CLUSTER}")))
            .args(extra)
            .env("KUBECONFIG", self.dir.0.join("kubeconfig"))
            .env("FERROLB_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ferrolb-k8s-adapter")
    }

    /// The real kubectl in the router, against the lab's API server (after `start_kube`):
    /// whether it succeeded, and what it printed (standard output, then standard error).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        self.kubectl_in(Path::new("."), args)
    }

    /// The same, run in directory `dir` (so that file names are printed as the user typed them).
    pub fn kubectl_in(&self, dir: &Path, args: &[&str]) -> (bool, String) {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{}-router", self.lab.0),
                "kubectl",
            ])
            .arg("--kubeconfig")
            .arg(self.dir.0.join("kubeconfig"))
            .args(args)
            .current_dir(dir)
            .output()
            .expect("kubectl must be installed (scripts/test installs it where it is missing)");
        (o.status.success(), text(&o))
    }

    /// What the endpoint controller writes for Service `default/<name>` whose pods run on
    /// `nodes`: one EndpointSlice owned by the Service, its endpoints ready, each with its node
    /// and Pod. The lab's pods are its web servers, on their nodes' network, so a pod's address
    /// is its node's.
    ///
    /// Before the Service exists (an endpoint controller that was quicker than the adapter):
    /// the slice has no owner and serves port 80.
    pub fn write_endpoints(&self, kube: &mut LabKube, name: &str, nodes: &[&str]) {
        let mut svc = kube.get("/api/v1/services", "default", name);
        let uid = svc["metadata"]["uid"].clone();
        if uid.is_null() {
            svc = serde_json::json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}]}});
        }
        let endpoints: Vec<Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "addresses": [node_address(n)],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": n,
                    "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("{name}-{n}")},
                })
            })
            .collect();
        let ports: Vec<Value> = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                serde_json::json!({"name": p["name"].as_str().unwrap_or(""),
                    "port": p["targetPort"].as_u64().or(p["port"].as_u64()),
                    "protocol": p["protocol"].as_str().unwrap_or("TCP")})
            })
            .collect();
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-lab01"), "namespace": "default",
                "labels": {"kubernetes.io/service-name": name,
                           "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        });
        let mut slice = slice;
        if !uid.is_null() {
            slice["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "v1",
                "kind": "Service", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true}]);
        }
        kube.put("/apis/discovery.k8s.io/v1/endpointslices", &slice);
    }

    /// Waits until an adapter has written its CA into every webhook of the install file's
    /// ValidatingWebhookConfiguration, so that MetalLB's objects can be applied.
    pub fn wait_webhook(&self, kube: &mut LabKube) {
        let start = Instant::now();
        loop {
            let vwc = kube.get(
                "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
                "",
                "ferrolb-webhook-configuration",
            );
            let hooks = vwc["webhooks"].as_array().cloned().unwrap_or_default();
            if !hooks.is_empty()
                && hooks
                    .iter()
                    .all(|h| h["clientConfig"]["caBundle"].is_string())
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the adapter published no webhook CA: {vwc}\n{}",
                self.log("adapter")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL of the allocator.
    pub fn kill_allocator(&mut self) {
        if let Some(mut c) = self.allocator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_announcer(&mut self, node: &str) {
        let metrics = format!("{}:7472", node_address(node));
        let mut args = vec![
            "--allocator",
            SERVER,
            "--cluster",
            CLUSTER,
            "--node",
            node,
            "--answerer",
            self.options.answerer,
            "--metrics-listen",
            &metrics,
        ];
        let mut extra = self.options.announcer_args.clone();
        if !extra.iter().any(|a| a == "--tls-cert") {
            extra.extend(test_pki().args(&format!("cluster/{CLUSTER}/node/{node}")));
        }
        args.extend(extra.iter().map(String::as_str));
        let announcer = bin("ferrolb-announcer").to_string_lossy().into_owned();
        let wrapper = self.options.announcer_wrapper.clone();
        let child = match wrapper.split_first() {
            None => self.spawn(node, &announcer, &args, node),
            Some((program, rest)) => {
                let mut all: Vec<&str> = rest.iter().map(String::as_str).collect();
                all.push(&announcer);
                all.extend(args);
                self.spawn(node, program, &all, node)
            }
        };
        self.announcers.insert(node.to_string(), child);
    }

    pub fn announcer_pid(&self, node: &str) -> u32 {
        self.announcers
            .get(node)
            .map(Child::id)
            .unwrap_or_else(|| panic!("no announcer runs on {node}"))
    }

    /// How a node's announcer exited, once it has.
    pub fn announcer_exit(&mut self, node: &str) -> Option<std::process::ExitStatus> {
        self.announcers
            .get_mut(node)
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL of a node's announcer; returns when it is dead.
    pub fn kill_announcer(&mut self, node: &str) {
        if let Some(mut c) = self.announcers.remove(node) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The node dies: its announcer and web server get SIGKILL and its link goes dark.
    pub fn crash_node(&self, node: &str) {
        for c in [self.announcers.get(node), self.http.get(node)]
            .into_iter()
            .flatten()
        {
            let _ = Command::new("kill")
                .args(["-9", &c.id().to_string()])
                .status();
        }
        self.must(node, &["ip", "link", "set", "eth0", "down"]);
    }

    /// SIGTERM of a node's announcer, and waits for it to finish.
    pub fn stop_announcer(&mut self, node: &str) {
        if let Some(mut c) = self.announcers.remove(node) {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// Runs `program` (a benchmark binary that calls `load_bulk` when given `--load URL COUNT`)
    /// in the router's namespace to make `count` leases in pool `bulk`, endpoints on n1.
    pub fn load_bulk(&self, program: &str, count: usize) {
        let me = bin(program).to_string_lossy().into_owned();
        self.must("router", &[&me, "--load", SERVER, &count.to_string()]);
    }

    /// Runs ferrolbctl in the router's namespace.
    pub fn ctl_output(&self, args: &[&str]) -> Output {
        let ctl = bin("ferrolbctl").to_string_lossy().into_owned();
        let tls = test_pki().args("admin");
        let mut v = vec![ctl.as_str(), "--server", SERVER];
        v.extend(tls.iter().map(String::as_str));
        v.extend_from_slice(args);
        self.lab.run("router", &v)
    }

    /// Starts ferrolbctl in the router's namespace, for a command that runs until it is killed
    /// (`announcements --watch`); its standard output is piped.
    pub fn ctl_spawn(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &format!("{}-router", self.lab.0)])
            .arg(bin("ferrolbctl"))
            .args(["--server", SERVER])
            .args(test_pki().args("admin"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ferrolbctl")
    }

    /// Runs ferrolbctl in the router's namespace; fails the test if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let o = self.ctl_output(args);
        assert!(o.status.success(), "ferrolbctl {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// The home-lab scenario's configuration and its Service, with endpoints on `nodes`.
    pub fn serve_home_nginx(&self, nodes: &[&str], local: bool) {
        let file = scenarios().join("home-ip-pool.yaml");
        self.ctl(&["apply", "-f", &file.to_string_lossy(), "--cluster", CLUSTER]);
        self.allocate("home-nginx", &["--port", "tcp/80"]);
        self.set_endpoints("home-nginx", nodes, local);
    }

    /// `ferrolbctl allocate` for Service `default/<name>` of the lab's cluster, with `more`
    /// flags; what it printed.
    pub fn allocate(&self, name: &str, more: &[&str]) -> String {
        let mut args = vec![
            "allocate",
            "--cluster",
            CLUSTER,
            "--namespace",
            "default",
            "--name",
            name,
        ];
        args.extend_from_slice(more);
        self.ctl(&args)
    }

    /// An IPv6 pool on the lab's own prefix with its L2Advertisement, and a Service `web6` on
    /// it with endpoints everywhere; returns the Service's address.
    pub fn serve_v6(&self) -> String {
        let file = self.dir.0.join("v6.yaml");
        std::fs::write(
            &file,
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab-v6}\n\
             spec:\n  addresses: [fd00:250::240-fd00:250::245]\n---\n\
             apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: lab-v6}\n\
             spec:\n  ipAddressPools: [lab-v6]\n",
        )
        .expect("write the IPv6 pool file");
        self.ctl(&["apply", "-f", &file.to_string_lossy(), "--cluster", CLUSTER]);
        self.ctl(&[
            "allocate",
            "--cluster",
            CLUSTER,
            "--namespace",
            "default",
            "--name",
            "web6",
            "--family",
            "ipv6",
            "--pool",
            "lab-v6",
        ]);
        self.set_endpoints("web6", &NODES, false);
        "fd00:250::240".to_string()
    }

    pub fn set_endpoints(&self, name: &str, nodes: &[&str], local: bool) {
        let mut args = vec![
            "endpoints",
            "set",
            "--cluster",
            CLUSTER,
            "--namespace",
            "default",
            "--name",
            name,
        ];
        for n in nodes {
            args.extend(["--node", n]);
        }
        if local {
            args.push("--local");
        }
        self.ctl(&args);
    }

    /// Who announces `ip` now, per the allocator (None: nobody, with the reason).
    pub fn owner(&self, ip: &str) -> Result<String, String> {
        let out = self.ctl(&["-o", "json", "announcements", "--cluster", CLUSTER]);
        let v: Value = serde_json::from_str(&out).expect("ferrolbctl -o json");
        let a = v["announcements"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["ip"] == ip)
            .ok_or_else(|| "no lease on it".to_string())?;
        match a["node"].as_str() {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            _ => Err(a["reason"].as_str().unwrap_or_default().to_string()),
        }
    }

    /// Waits until `check` accepts the owner of `ip`; returns it.
    pub fn wait_owner(
        &self,
        ip: &str,
        within: Duration,
        check: impl Fn(&Result<String, String>) -> bool,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let o = self.owner(ip);
            if check(&o) {
                return o;
            }
            assert!(
                start.elapsed() < within,
                "owner of {ip} still {o:?} after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client's HTTP request to the address: which node answered.
    pub fn curl(&self, ip: &str) -> Option<String> {
        let url = if ip.contains(':') {
            format!("http://[{ip}]/")
        } else {
            format!("http://{ip}/")
        };
        let o = self.lab.run("client", &["curl", "-s", "-m", "1", &url]);
        o.status.success().then(|| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("served by ")
                .to_string()
        })
    }

    /// curl until a node answers, or `within` passes.
    pub fn curl_until(&self, ip: &str, within: Duration, want: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(n) = self.curl(ip)
                && want(&n)
            {
                return n;
            }
            assert!(
                start.elapsed() < within,
                "no wanted answer from {ip} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The MAC of `ip` in the client's neighbour table.
    pub fn client_neighbour(&self, ip: &str) -> Option<String> {
        let out = self.must("client", &["ip", "neigh", "show", ip]);
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "lladdr" {
                return words.next().map(str::to_string);
            }
        }
        None
    }

    /// The client asking `ip:80` over HTTP until [`Timeline::stop`]: every change of who
    /// answers, for pictures.
    pub fn timeline(&self, ip: &str) -> Timeline {
        let mut probe = Command::new("ip")
            .args(["netns", "exec", &format!("{}-client", self.lab.0)])
            .arg(bin("lab-probe"))
            .args(["--timeline", &format!("{ip}:80")])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lab-probe --timeline");
        let out = BufReader::new(probe.stdout.take().expect("probe stdout"));
        let reader = std::thread::spawn(move || {
            out.lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let (t, who) = l.split_once(' ')?;
                    Some((t.parse().ok()?, (who != "-").then(|| who.to_string())))
                })
                .collect()
        });
        Timeline { probe, reader }
    }

    /// Starts the client's probe against `ip:80`, runs `fault`, and returns the time from the
    /// fault to the first answer of a node other than `old`, and that node.
    pub fn failover(&self, ip: &str, old: &str, fault: impl FnOnce()) -> (Duration, String) {
        let mut probe = Command::new("ip")
            .args(["netns", "exec", &format!("{}-client", self.lab.0)])
            .arg(bin("lab-probe"))
            .args([&format!("{ip}:80"), old, "10000"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lab-probe");
        let mut out = BufReader::new(probe.stdout.take().expect("probe stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("probe says ready");
        assert_eq!(line.trim(), "ready");
        let at = SystemTime::now();
        fault();
        line.clear();
        out.read_line(&mut line).expect("probe result");
        let _ = probe.wait();
        let mut parts = line.split_whitespace();
        let micros: u128 = match parts.next().and_then(|t| t.parse().ok()) {
            Some(m) => m,
            None => panic!("no failover within 10 s: {line}\n{}", self.logs()),
        };
        let node = parts.next().unwrap_or_default().to_string();
        let fault_micros = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        (
            Duration::from_micros(micros.saturating_sub(fault_micros) as u64),
            node,
        )
    }

    /// A number from a node's announcer metrics (`/metrics`, read from the router), 0 if absent.
    pub fn announcer_metric(&self, node: &str, name: &str) -> u64 {
        let url = format!("http://{}:7472/metrics", node_address(node));
        let text = self.must("router", &["curl", "-s", &url]);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The last lines of every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["allocator", "adapter", "n1", "n2", "n3", "bird"] {
            let log = self.log(name);
            let lines: Vec<&str> = log.lines().collect();
            s += &format!("--- {name}.log\n");
            for l in &lines[lines.len().saturating_sub(15)..] {
                s += l;
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for HomeLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for c in self
            .announcers
            .values_mut()
            .chain(self.allocator.iter_mut())
            .chain(self.http.values_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes `count` leases in pool `bulk` (Services `bulk/s0`, `bulk/s1`, …), each with endpoints
/// on n1, through the API at `url`. Benchmarks run it inside the lab's router namespace, where
/// the allocator listens (see `HomeLab::load_bulk`).
pub fn load_bulk(url: &str, count: usize) {
    use ferrolb_proto::v1 as pb;
    use ferrolb_proto::v1::cluster_state_service_client::ClusterStateServiceClient;

    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        allocate_many(url, count, 16, |i| pb::AllocateRequest {
            owner: Some(service(CLUSTER, "bulk", &format!("s{i}"))),
            pool: "bulk".into(),
            ..Default::default()
        })
        .await;
        let cs = ClusterStateServiceClient::new(channel(url, "admin").await);
        let mut tasks = vec![];
        for t in 0..16 {
            let mut cs = cs.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..count).step_by(16) {
                    cs.set_endpoints(pb::ServiceEndpoints {
                        cluster: CLUSTER.into(),
                        namespace: "bulk".into(),
                        name: format!("s{i}"),
                        serving_nodes: vec!["n1".into()],
                        any_serving: true,
                        traffic_policy_local: false,
                        ..Default::default()
                    })
                    .await
                    .expect("set endpoints");
                }
            }));
        }
        for t in tasks {
            t.await.expect("endpoint task");
        }
    });
}

/// A probe started by [`HomeLab::timeline`].
pub struct Timeline {
    probe: Child,
    reader: std::thread::JoinHandle<Vec<crate::plot::Sample>>,
}

impl Timeline {
    /// Ends the probe; what it saw, with a last sample at the end.
    pub fn stop(mut self) -> Vec<crate::plot::Sample> {
        let _ = self.probe.kill();
        let _ = self.probe.wait();
        let mut samples = self.reader.join().unwrap_or_default();
        if let Some((_, who)) = samples.last().cloned() {
            samples.push((crate::plot::unix_micros(), who));
        }
        samples
    }
}
