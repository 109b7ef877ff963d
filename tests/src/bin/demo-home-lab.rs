//! Both scenarios end to end (`scripts/demo`), told as MetalLB's walk-through: a LAN of network
//! namespaces with a router running the lab's Kubernetes API server, the adapter and the
//! allocator, three nodes running an announcer and a small web server each (the lab's nginx
//! pods), and a client. Every step is a command a user types — the real kubectl against the lab's
//! API server, curl on the client — shown with its real output: the install file, `kubectl
//! expose` left `<pending>`, the walk-through's `ip-pool.yaml` and `l2-config.yaml` byte for
//! byte, 192.168.1.240 and the page. Then the announcing node dies and the page comes back
//! through another node, a bad pool is refused at apply time, and the company scenario's
//! `company-bgp-pool.yaml` puts a Service's /32 in the router's BGP table from every live node.

use std::path::Path;
use std::time::{Duration, Instant};

use ferrolb_e2e::home::{CLUSTER, HomeLab, LabKube, NODES, Options, VIP, mac, scenarios};
use ferrolb_e2e::plot;
use ferrolb_e2e::routers::{BIRD_COMPANY, Bird, eventually};

fn say(title: &str) {
    println!("\n== {title}");
}

/// `kubectl ARGS` as typed, and what it printed; the demo stops if it fails.
fn kubectl(lab: &HomeLab, args: &[&str]) -> String {
    let (ok, out) = typed(lab, Path::new("."), args);
    assert!(ok, "kubectl {} failed:\n{}", args.join(" "), lab.logs());
    out
}

/// `kubectl ARGS` typed in directory `dir`, and what it printed.
fn typed(lab: &HomeLab, dir: &Path, args: &[&str]) -> (bool, String) {
    println!("$ kubectl {}", args.join(" "));
    let (ok, out) = lab.kubectl_in(dir, args);
    print!("{out}");
    (ok, out)
}

/// `kubectl get svc` once the Service `name` shows `want` as its EXTERNAL-IP.
fn get_svc_when(lab: &HomeLab, name: &str, want: &str) {
    let start = Instant::now();
    loop {
        let (_, out) = lab.kubectl(&["get", "svc", name]);
        let external = out.lines().nth(1).and_then(|l| l.split_whitespace().nth(3));
        if external == Some(want) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} did not get {want}: {out}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    kubectl(lab, &["get", "svc"]);
}

/// `cat FILE` as typed, from the directory it is in.
fn cat(file: &Path) {
    println!(
        "$ cat {}",
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    print!("{}", std::fs::read_to_string(file).unwrap_or_default());
}

fn client(lab: &HomeLab, cmd: &[&str]) {
    println!("client$ {}", cmd.join(" "));
    let o = lab.lab.run("client", cmd);
    print!("{}", String::from_utf8_lossy(&o.stdout));
}

/// `kubectl apply -f FILE`, typed in the file's directory.
fn apply(lab: &HomeLab, file: &Path) -> (bool, String) {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    typed(
        lab,
        file.parent().unwrap_or(Path::new(".")),
        &["apply", "-f", &name],
    )
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    say(
        "the lab: router 10.250.0.1 (Kubernetes API server, adapter, allocator), n1 n2 n3 .11-.13 \
         (announcer + nginx), client .100 on the LAN 192.168.1.0/24",
    );
    let lab = HomeLab::up(
        "demo",
        Options {
            lab_name: Some(name),
            ..Options::default()
        },
    );
    let mut kube: LabKube = lab.start_kube_empty();

    say("install ferrolb (what the lab can hold: CRDs, RBAC, the webhook's registration, …)");
    let checkout = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let (ok, _) = typed(
        &lab,
        Path::new(checkout),
        &["apply", "-f", "deploy/ferrolb-native.yaml"],
    );
    assert!(ok, "the install file does not apply");
    // The adapter the install file describes, run by the lab (its allocator and announcers run
    // already): its webhook where the lab's API server reaches the Service ferrolb-webhook.
    let _adapter =
        ferrolb_e2e::Process(lab.start_adapter_with(&["--webhook-listen", "127.0.0.1:443"]));
    lab.wait_webhook(&mut kube);

    say("MetalLB's walk-through: an nginx Deployment, exposed as a LoadBalancer Service");
    kubectl(&lab, &["create", "deployment", "nginx", "--image=nginx"]);
    kubectl(
        &lab,
        &[
            "expose",
            "deployment",
            "nginx",
            "--type=LoadBalancer",
            "--port=80",
        ],
    );
    // The endpoint controller's part: the lab's web servers are nginx's pods.
    lab.write_endpoints(&mut kube, "nginx", &NODES);
    std::thread::sleep(Duration::from_secs(1));
    kubectl(&lab, &["get", "svc"]);
    println!("(EXTERNAL-IP <pending>: there is no address pool yet — what ferrolb is for)");

    say("the walk-through's pool and layer-2 advertisement, unchanged");
    for file in ["ip-pool.yaml", "l2-config.yaml"] {
        let file = scenarios().join(file);
        cat(&file);
        let (ok, _) = apply(&lab, &file);
        assert!(ok, "{}", lab.logs());
    }
    get_svc_when(&lab, "nginx", VIP);
    kubectl(&lab, &["get", "ipaddresspools", "-n", "metallb-system"]);

    say("the client on the LAN reaches it");
    lab.curl_until(VIP, Duration::from_secs(10), |_| true);
    client(&lab, &["curl", "-s", &format!("http://{VIP}")]);
    client(&lab, &["ip", "neigh", "show", VIP]);
    let owner = lab
        .wait_owner(VIP, Duration::from_secs(10), Result::is_ok)
        .unwrap_or_default();
    println!("({owner} is {}: it announces {VIP})", mac(&owner));
    kubectl(&lab, &["get", "servicel2statuses", "-n", "metallb-system"]);

    say(&format!(
        "{owner}, the announcing node, dies (processes killed, link down)"
    ));
    // An operator following the announcements meanwhile.
    let mut watch = lab.ctl_spawn(&["announcements", "--cluster", CLUSTER, "--watch"]);
    // And the client asking all along, for a picture.
    let timeline = lab.timeline(VIP);
    std::thread::sleep(Duration::from_millis(500));
    let mut died = 0;
    let (took, next) = lab.failover(VIP, &owner, || {
        died = plot::unix_micros();
        lab.crash_node(&owner)
    });
    println!(
        "(the client got its first answer through {next} {} ms after {owner} died)",
        took.as_millis()
    );
    std::thread::sleep(Duration::from_millis(500));
    let picture = plot::picture_path("demo-failover.svg");
    let drawn = plot::timeline(
        &picture,
        &format!("the client's requests to {VIP} while {owner} dies"),
        &NODES,
        &timeline.stop(),
        &[plot::Fault {
            at_us: died,
            what: format!("{owner} dies:"),
            gap: took,
        }],
    );
    drawn.unwrap_or_else(|e| panic!("the picture of the failover: {e}"));
    println!("(the client's view as a picture: {})", picture.display());
    let _ = watch.kill();
    let watched = watch
        .wait_with_output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    println!("$ ferrolbctl announcements --cluster {CLUSTER} --watch   (meanwhile)");
    print!("{}", String::from_utf8_lossy(&watched));
    client(&lab, &["curl", "-s", &format!("http://{VIP}")]);
    client(&lab, &["ip", "neigh", "show", VIP]);
    println!("({next} is {})", mac(&next));
    println!("$ ferrolbctl history --cluster {CLUSTER}");
    print!("{}", lab.ctl(&["history", "--cluster", CLUSTER]));
    kubectl(&lab, &["get", "svc"]);
    eventually(
        Duration::from_secs(5),
        "the ServiceL2Status naming the new node",
        || {
            kube.get(
                "/apis/metallb.io/v1beta1/servicel2statuses",
                "metallb-system",
                "l2-default-nginx",
            )["status"]["node"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        },
        |n| *n == next,
    );
    kubectl(&lab, &["get", "servicel2statuses", "-n", "metallb-system"]);

    say("a pool that overlaps the first is refused at apply time, by ferrolb's webhook");
    let overlap = lab.dir.0.join("more-ips.yaml");
    std::fs::write(
        &overlap,
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: more-ips\n  \
         namespace: metallb-system\nspec:\n  addresses:\n  - 192.168.1.248/29\n",
    )
    .expect("write more-ips.yaml");
    cat(&overlap);
    let (ok, out) = apply(&lab, &overlap);
    assert!(!ok && out.contains("overlaps"), "{out}");

    say("the company scenario: BGP to the lab's router (BIRD 2, AS 65000)");
    let bird = Bird::start(&lab, BIRD_COMPANY);
    let company = std::fs::read_to_string(scenarios().join("company-bgp-pool.yaml"))
        .unwrap_or_default()
        .replace("10.100.1.1", "10.250.0.1");
    let file = lab.dir.0.join("company-bgp-pool.yaml");
    std::fs::write(&file, &company).expect("write company-bgp-pool.yaml");
    println!(
        "(company-bgp-pool.yaml with its router's address 10.100.1.1 made the lab's 10.250.0.1)"
    );
    cat(&file);
    let (ok, _) = apply(&lab, &file);
    assert!(ok, "{}", lab.logs());
    let web = lab.dir.0.join("company-web.yaml");
    std::fs::write(
        &web,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: company-web\n  annotations:\n    \
         metallb.io/address-pool: company-pool\nspec:\n  type: LoadBalancer\n  selector:\n    \
         app: nginx\n  ports:\n  - port: 80\n    targetPort: 80\n",
    )
    .expect("write company-web.yaml");
    cat(&web);
    let (ok, _) = apply(&lab, &web);
    assert!(ok, "{}", lab.logs());
    lab.write_endpoints(&mut kube, "company-web", &NODES);
    get_svc_when(&lab, "company-web", "10.100.50.1");
    let live: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    let prefix = "10.100.50.1/32";
    eventually(
        Duration::from_secs(15),
        "the /32 from every live node",
        || bird.paths(),
        |p| p.iter().filter(|p| p.prefix == prefix).count() == live.len(),
    );
    eventually(
        Duration::from_secs(5),
        "a ServiceBGPStatus per live node",
        || kube.list("/apis/metallb.io/v1beta1/servicebgpstatuses"),
        |l| l.len() == live.len(),
    );
    kubectl(&lab, &["get", "servicebgpstatuses", "-n", "metallb-system"]);
    println!("router$ birdc show route {prefix}");
    print!("{}", bird.birdc(&["show", "route", prefix]));
    println!("router$ ip route show 10.100.50.1");
    print!(
        "{}",
        lab.must("router", &["ip", "route", "show", "10.100.50.1"])
    );

    println!(
        "\ndemo done: nginx got {VIP}; it answered from {owner}, then from {next} {} ms after \
         {owner} died; {prefix} is routed over {} ({owner} is down)",
        took.as_millis(),
        live.join(" and ")
    );
}
