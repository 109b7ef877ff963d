//! The allocator reaches PostgreSQL over TLS (rustls): a server with `ssl = on`, a certificate
//! of the test's CA, plaintext refused. `sslmode=verify-full` with the CA connects and checks
//! the server's name; with another CA it is refused; `require` encrypts without checking; a
//! role that must show a client certificate gets the allocator's.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrolb_e2e::{Allocator, Pki, PrivatePg, test_pki};

fn url(pg: &PrivatePg, user: &str, params: &str) -> String {
    format!("postgres://{user}@127.0.0.1:{}/postgres?{params}", pg.port)
}

/// How many of the allocator's sessions are encrypted.
fn encrypted_sessions(pg: &PrivatePg) -> u32 {
    pg.query(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name LIKE 'ferrolb-allocator/%' AND s.ssl",
    )
    .parse()
    .unwrap()
}

/// Starts an allocator that should not get to serve; returns what it said.
fn refused(url: &str) -> String {
    let a = Allocator::launch(Some(url), &[], &[("FERROLB_LOG", "info")]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        std::net::TcpStream::connect(a.addr).is_err(),
        "the allocator served on a database it should not have trusted"
    );
    a.stderr_text()
}

#[test]
fn the_database_is_reached_over_verified_tls() {
    let pg = PrivatePg::start_tls(test_pki());
    let ca = test_pki().ca_path().display().to_string();

    // verify-full: the CA and the name (127.0.0.1 is in the server's certificate).
    let a = Allocator::start(
        Some(&url(
            &pg,
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        )),
        &[],
    );
    assert!(encrypted_sessions(&pg) > 0, "no encrypted session");
    drop(a);

    // Another CA: the server is not who it says.
    let other = Pki::new("ferrolb-other-ca");
    let said = refused(&url(
        &pg,
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            other.ca_path().display()
        ),
    ));
    assert!(said.contains("cannot open the store"), "{said}");
    assert!(said.to_lowercase().contains("certificate"), "{said}");

    // require: encrypted, the certificate unchecked.
    let _a = Allocator::start(Some(&url(&pg, "postgres", "sslmode=require")), &[]);

    // A role that must show a client certificate of the CA.
    let client = test_pki().files("client/postgres-client");
    let _b = Allocator::start(
        Some(&url(
            &pg,
            "certified",
            &format!(
                "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
                client.cert.display(),
                client.key.display()
            ),
        )),
        &[],
    );
    let said = refused(&url(
        &pg,
        "certified",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert!(said.contains("cannot open the store"), "{said}");
}
