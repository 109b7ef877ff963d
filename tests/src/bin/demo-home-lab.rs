//! Both scenarios end to end (`scripts/demo`): a LAN of network namespaces with a router
//! running the allocator, three nodes running an announcer and a small web server each, and a
//! client. The home-lab scenario's `home-ip-pool.yaml` is applied as a MetalLB user wrote it, the
//! Service `default/home-nginx` gets 192.168.1.240, the client reaches it with curl, the
//! announcing node dies, and the client reaches it again through another node. Then the company
//! scenario: BIRD 2 in the router, `company-bgp-pool.yaml` with the lab router's address, and
//! the router's table holding the Service's /32 from every live node.

use std::time::Duration;

use ferrolb_e2e::home::{CLUSTER, HomeLab, NODES, Options, VIP, mac, node_address, scenarios};
use ferrolb_e2e::routers::{BIRD_COMPANY, Bird, eventually};

fn say(title: &str) {
    println!("\n== {title}");
}

fn show(lab: &HomeLab, args: &[&str]) {
    println!("$ ferrolbctl {}", args.join(" "));
    print!("{}", lab.ctl(args));
}

/// `ferrolbctl allocate` for a Service in namespace `default`, shown.
fn allocate(lab: &HomeLab, name: &str, more: &[&str]) {
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
    show(lab, &args);
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
    allocate(&lab, "home-nginx", &["--port", "tcp/80"]);
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

    say("the company scenario: BGP to the lab's router (BIRD 2, AS 65000)");
    let bird = Bird::start(&lab, BIRD_COMPANY);
    let company = std::fs::read_to_string(scenarios().join("company-bgp-pool.yaml"))
        .unwrap_or_default()
        .replace("10.100.1.1", "10.250.0.1");
    println!("company-bgp-pool.yaml, its router's address 10.100.1.1 made the lab's 10.250.0.1:");
    print!("{company}");
    let file = lab.dir.0.join("company-bgp-pool.yaml");
    if let Err(e) = std::fs::write(&file, &company) {
        panic!("write {}: {e}", file.display());
    }
    show(
        &lab,
        &["apply", "-f", &file.to_string_lossy(), "--cluster", CLUSTER],
    );
    allocate(&lab, "company-web", &["--pool", "company-pool"]);
    lab.set_endpoints("company-web", &NODES, false);
    let live: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    let prefix = "10.100.50.1/32";
    eventually(
        Duration::from_secs(15),
        "the /32 from every live node",
        || bird.paths(),
        |p| p.iter().filter(|p| p.prefix == prefix).count() == live.len(),
    );
    show(&lab, &["bgp-announcements", "--cluster", CLUSTER]);
    println!("router$ birdc show route {prefix}");
    print!("{}", bird.birdc(&["show", "route", prefix]));
    println!("router$ ip route show 10.100.50.1");
    print!(
        "{}",
        lab.must("router", &["ip", "route", "show", "10.100.50.1"])
    );

    println!(
        "\ndemo done: {VIP} answered from {owner}, then from {next} {} ms after {owner} died; \
         {prefix} is routed over {} ({owner} is down)",
        took.as_millis(),
        live.join(" and ")
    );
}
