//! The home-lab scenario end to end (`scripts/demo`): a LAN of network namespaces with a router
//! running the allocator, three nodes running an announcer and a small web server each, and a
//! client. The scenario's `home-ip-pool.yaml` is applied as a MetalLB user wrote it, the Service
//! `default/home-nginx` gets 192.168.1.240, the client reaches it with curl, the announcing
//! node dies, and the client reaches it again through another node.

use std::time::Duration;

use ferrolb_e2e::home::{CLUSTER, HomeLab, NODES, Options, VIP, mac, node_address, scenarios};

fn say(title: &str) {
    println!("\n== {title}");
}

fn show(lab: &HomeLab, args: &[&str]) {
    println!("$ ferrolbctl {}", args.join(" "));
    print!("{}", lab.ctl(args));
}

fn client(lab: &HomeLab, cmd: &[&str]) {
    println!("client$ {}", cmd.join(" "));
    let o = lab.lab.run("client", cmd);
    print!("{}", String::from_utf8_lossy(&o.stdout));
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    say(
        "the lab: router 10.250.0.1 (allocator), n1 n2 n3 .11-.13 (announcer + web server), client .100",
    );
    let lab = HomeLab::up(
        "demo",
        Options {
            lab_name: Some(name),
            ..Options::default()
        },
    );
    let file = scenarios().join("home-ip-pool.yaml");
    say("the home-lab scenario, unchanged MetalLB YAML");
    print!("{}", std::fs::read_to_string(&file).unwrap_or_default());
    show(
        &lab,
        &["apply", "-f", &file.to_string_lossy(), "--cluster", CLUSTER],
    );
    say(
        "kubectl expose deployment nginx --type=LoadBalancer --port=80: the Service gets its address",
    );
    show(
        &lab,
        &[
            "allocate",
            "--cluster",
            CLUSTER,
            "--namespace",
            "default",
            "--name",
            "home-nginx",
            "--port",
            "tcp/80",
        ],
    );
    say("its pods run on every node (what the Kubernetes adapter reports from EndpointSlices)");
    let mut args = vec![
        "endpoints",
        "set",
        "--cluster",
        CLUSTER,
        "--namespace",
        "default",
        "--name",
        "home-nginx",
    ];
    for n in NODES {
        args.extend(["--node", n]);
    }
    show(&lab, &args);
    let owner = lab
        .wait_owner(VIP, Duration::from_secs(10), Result::is_ok)
        .unwrap_or_default();
    show(&lab, &["nodes", "list", "--cluster", CLUSTER]);
    show(&lab, &["announcements", "--cluster", CLUSTER]);

    say("the client reaches the Service");
    lab.curl_until(VIP, Duration::from_secs(10), |_| true);
    client(&lab, &["curl", "-s", &format!("http://{VIP}/")]);
    client(&lab, &["ip", "neigh", "show", VIP]);
    println!("({owner} is {})", mac(&owner));

    say(&format!(
        "{owner}, the announcing node, dies (processes killed, link down)"
    ));
    let (took, next) = lab.failover(VIP, &owner, || lab.crash_node(&owner));
    println!(
        "the client got its first answer through {next} {} ms after {owner} died",
        took.as_millis()
    );
    client(&lab, &["curl", "-s", &format!("http://{VIP}/")]);
    client(&lab, &["ip", "neigh", "show", VIP]);
    println!("({next} is {})", mac(&next));
    show(&lab, &["announcements", "--cluster", CLUSTER]);
    show(&lab, &["nodes", "list", "--cluster", CLUSTER]);

    say(&format!("what {next}'s announcer counted"));
    let url = format!("http://{}:7472/metrics", node_address(&next));
    let metrics = lab.must("router", &["curl", "-s", &url]);
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("ferrolb_announcer_"))
    {
        println!("{l}");
    }
    println!(
        "\ndemo done: {VIP} answered from {owner}, then from {next} {} ms after {owner} died",
        took.as_millis()
    );
}
