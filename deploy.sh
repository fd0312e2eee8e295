#!/usr/bin/env bash
# deploy.sh: installs natter on a host over one ssh connection and (re)starts it, checking its
# /healthz over the real URL and rolling back to the previous binary when it does not come up.
# Templates: deploy/natter.service.in, deploy/natterctl.in, deploy/certbot-hook.in.
set -euo pipefail

readonly EXIT_USAGE=2        # bad arguments or local files
readonly EXIT_REFUSED=3      # the host cannot run this binary, or lacks what the deploy needs
readonly EXIT_ROLLED_BACK=4  # the new version did not come up; the previous one runs again
readonly EXIT_DOWN=5         # not healthy, and no previous version brought it back
readonly EXIT_NOT_RELOADED=6 # the new certificate was refused on reload; the old one still serves
readonly SERVICE_USER=natter
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HEALTH_SECS=${NATTER_DEPLOY_HEALTH_SECS:-30}

usage() {
  cat <<'EOF'
usage: ./deploy.sh user@host [options]

Installs natter on the host and (re)starts it; a second run with nothing changed changes nothing.
  --listen ADDR               address natter listens on (default :443; :PORT means all addresses)
  --cert PEM --key PEM        the certificate chain and key to install (/etc/natter/tls)
  --letsencrypt DOMAIN        use certbot's certificate for DOMAIN (issued with --standalone when
                              missing), copied by a deploy hook that reloads natter on renewal
  --binary PATH               the natter binary to install (default: cargo build --release)
  --data DIR                  data directory on the host (default /var/lib/natter/data; natter
                              compacts a bloated store beside it, so its parent must be
                              writable by the natter user)
  --service-manager M         systemd (default) or none (natterctl, a small supervisor)
  --ssh-port N                ssh port (default 22)
  --identity FILE             ssh private key
  --ssh-option OPT            extra ssh -o option (repeatable)
  --url URL                   health URL (default https://HOST:PORT/healthz, HOST the domain or host)
  --ca PEM                    trust this CA for the health check (private or test CAs)
  --prefix DIR                install under DIR instead of / (tests; --service-manager none only)
  --dry-run                   print every remote command, write nothing
  --print-unit                print the systemd unit this deploy would install, and exit
  -h, --help                  this text
On the host: /usr/local/bin/natter (previous one: natter.prev), the system user natter,
/etc/natter/natter.env (NATTER_* settings; put your own in /etc/natter/local.env), the JWT
secret /etc/natter/jwt-secret (made once, mode 0600, never overwritten), and natter.service
(or natterctl with --service-manager none).
EOF
}

die() { echo "deploy: $2" >&2; exit "$1"; }
note() { echo "deploy: $*"; }

target="" listen=":443" cert="" key="" domain="" binary="" data="" manager=systemd ssh_port=22
identity="" url="" ca="" prefix="" dry_run="" print_unit="" ssh_opts=()
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$EXIT_USAGE" "$1 needs a value (see --help)"; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift; continue ;;
    --print-unit) print_unit=1; shift; continue ;;
    --listen | --cert | --key | --letsencrypt | --binary | --data | --service-manager | --ssh-port | \
      --identity | --ssh-option | --url | --ca | --prefix) need_value "$@" ;;
    -*) die "$EXIT_USAGE" "unknown option $1 (see --help)" ;;
    *) [ -z "$target" ] || die "$EXIT_USAGE" "one host only: $target and $1"; target=$1; shift; continue ;;
  esac
  case "$1" in
    --listen) listen=$2 ;;
    --cert) cert=$2 ;;
    --key) key=$2 ;;
    --letsencrypt) domain=$2 ;;
    --binary) binary=$2 ;;
    --data) data=$2 ;;
    --service-manager) manager=$2 ;;
    --ssh-port) ssh_port=$2 ;;
    --identity) identity=$2 ;;
    --ssh-option) ssh_opts+=(-o "$2") ;;
    --url) url=$2 ;;
    --ca) ca=$2 ;;
    --prefix) prefix=${2%/} ;;
  esac
  shift 2
done

work=$(mktemp -d "${TMPDIR:-/tmp}/natter-deploy.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- paths on the host ---------------------------------------------------------------------------
bin_dir=$prefix/usr/local/bin bin=$prefix/usr/local/bin/natter
etc=$prefix/etc/natter tls_dir=$prefix/etc/natter/tls
env_file=$etc/natter.env local_env=$etc/local.env secret=$etc/jwt-secret
# The store lives one level below the state directory: a startup compaction writes its copy
# beside the data dir (DATA.compact), which must therefore be writable by the service.
state=$prefix/var/lib/natter
data=${data:-$state/data}
unit=$prefix/etc/systemd/system/natter.service
ctl=$prefix/usr/local/lib/natter/natterctl run_dir=$prefix/run/natter log=$prefix/var/log/natter/natter.log
hook=$prefix/etc/letsencrypt/renewal-hooks/deploy/natter live=/etc/letsencrypt/live/$domain

rw_paths=""
case "$data" in /var/lib/natter/*) ;; *) rw_paths="ReadWritePaths=${data%/*}" ;; esac
# The certbot hook's reload: nothing to do when natter is not running (the first deploy).
if [ "$manager" = systemd ]; then reload_cmd="systemctl try-reload-or-restart natter"; else reload_cmd="$ctl try-reload"; fi
render() { # TEMPLATE OUT: @NAME@ replaced by the value of the matching variable
  sed -e "s|@BIN@|$bin|g" -e "s|@ENV_FILE@|$env_file|g" -e "s|@LOCAL_ENV@|$local_env|g" \
    -e "s|@RUN_DIR@|$run_dir|g" -e "s|@LOG@|$log|g" -e "s|@SERVICE_USER@|$SERVICE_USER|g" \
    -e "s|@DOMAIN@|$domain|g" -e "s|@LIVE@|$live|g" -e "s|@TLS_DIR@|$tls_dir|g" \
    -e "s|@RELOAD@|$reload_cmd|g" -e "s|@READ_WRITE_PATHS@|$rw_paths|g" "$HERE/deploy/$1" >"$work/$2"
}
if [ -n "$print_unit" ]; then
  render natter.service.in natter.service
  cat "$work/natter.service"
  exit 0
fi

# --- local checks -------------------------------------------------------------------------------
[ -n "$target" ] || { usage >&2; exit "$EXIT_USAGE"; }
case "$manager" in systemd | none) ;; *) die "$EXIT_USAGE" "--service-manager: '$manager' is not systemd or none" ;; esac
[[ "$ssh_port" =~ ^[0-9]+$ ]] || die "$EXIT_USAGE" "--ssh-port: '$ssh_port' is not a port number"
[ -z "$prefix" ] || [ "$manager" = none ] || die "$EXIT_USAGE" "--prefix works with --service-manager none only"
[[ "$listen" =~ ^(.*):([0-9]+)$ ]] || die "$EXIT_USAGE" "--listen: '$listen' is not [HOST]:PORT"
listen_host=${BASH_REMATCH[1]} port=${BASH_REMATCH[2]}
[ -n "$listen_host" ] || listen="0.0.0.0:$port"
if [ -n "$domain" ]; then
  [ -z "$cert$key" ] || die "$EXIT_USAGE" "give --cert/--key or --letsencrypt, not both"
elif [ -z "$cert" ] || [ -z "$key" ]; then
  die "$EXIT_USAGE" "give --cert PEM and --key PEM, or --letsencrypt DOMAIN (natter terminates TLS itself)"
fi
for f in "$cert" "$key" "$ca" "$identity"; do
  [ -z "$f" ] || [ -r "$f" ] || die "$EXIT_USAGE" "cannot read $f"
done
host=${target#*@} host=${host#[} host=${host%]}
url=${url:-https://${domain:-$host}:$port/healthz}
command -v curl >/dev/null || die "$EXIT_USAGE" "curl is needed here for the health check"

start_time=$(date +%s)
exec 3>&1 # --dry-run's listing, in order, also from inside $(look ...)
ssh_base=(ssh -p "$ssh_port" -o ControlPath="$work/ssh" -o ServerAliveInterval=10 "${ssh_opts[@]}")
[ -z "$identity" ] || ssh_base+=(-i "$identity" -o IdentitiesOnly=yes)
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  "${ssh_base[@]}" -O exit "$target" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "$binary" ]; then
  binary=${CARGO_TARGET_DIR:-$HERE/target}/release/natter
  if [ -n "$dry_run" ]; then
    note "would build: cargo build --release --locked"
  else
    note "building the release binary"
    (cd "$HERE" && cargo build --release --locked)
  fi
fi
[ -r "$binary" ] || [ -n "$dry_run" ] || die "$EXIT_USAGE" "--binary: cannot read $binary"

# --- the one ssh connection ---------------------------------------------------------------------
"${ssh_base[@]}" -o ControlMaster=yes -o ControlPersist=300 -fN "$target" ||
  die "$EXIT_REFUSED" "cannot ssh to $target (port $ssh_port)"
ssh_cmd=("${ssh_base[@]}" -o ControlMaster=no -o BatchMode=yes "$target")
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
sudo=""
# A read: runs in --dry-run too (printed there).
look() {
  [ -z "$dry_run" ] || echo "[dry-run] read: $1" >&3
  "${ssh_cmd[@]}" "$sudo sh -c $(q "$1")"
}
# A write: printed, and run unless --dry-run.
act() {
  if [ -n "$dry_run" ]; then echo "[dry-run] run: $1"; return 0; fi
  "${ssh_cmd[@]}" "$sudo sh -c $(q "$1")"
}

# --- can the host run this binary? --------------------------------------------------------------
# shellcheck disable=SC2016  # expanded on the host
read -r uid arch libc has_systemd has_tools < <(look 'v=$(getconf GNU_LIBC_VERSION 2>/dev/null) || v=none
  s=no; [ -d /run/systemd/system ] && s=yes
  t=no; command -v setpriv >/dev/null && command -v setsid >/dev/null && t=yes
  echo "$(id -u) $(uname -m) $(echo "$v" | tr " " -) $s $t"')
[ "$uid" = 0 ] || sudo="sudo -n"
note "host $host: $arch, libc ${libc}, systemd running: $has_systemd"
if [ -r "$binary" ] && [ "$(head -c 4 "$binary" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
  machine=$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')
  case "$arch" in
    x86_64) want=62 ;; aarch64 | arm64) want=183 ;; riscv64) want=243 ;; armv7l | armv6l) want=40 ;; *) want="" ;;
  esac
  [ "$machine" = "$want" ] || die "$EXIT_REFUSED" "$binary is built for ELF machine $machine, the host is $arch: build for the host's target"
  if grep -qa 'ld-musl' "$binary"; then
    [ "$libc" = none ] || note "a musl binary on a glibc host: fine if it is static"
  elif grep -qa 'ld-linux' "$binary"; then
    [ "$libc" != none ] || die "$EXIT_REFUSED" "$binary needs glibc and the host has none (musl?): build a static musl binary"
    needed=$(grep -ao 'GLIBC_2\.[0-9]*' "$binary" | cut -d. -f2 | sort -n | tail -1)
    have=${libc#glibc-2.} have=${have%%.*}
    [ "${needed:-0}" -le "$have" ] || die "$EXIT_REFUSED" "$binary needs glibc 2.$needed, the host has $libc: build on an older system"
  fi
elif [ -r "$binary" ]; then
  note "warning: $binary is not an ELF executable: architecture and libc not checked"
fi
if [ "$manager" = systemd ] && [ "$has_systemd" != yes ]; then
  die "$EXIT_REFUSED" "systemd is not running on $host: use --service-manager none"
fi
if [ "$manager" = none ] && [ "$has_tools" != yes ]; then
  die "$EXIT_REFUSED" "--service-manager none needs setpriv and setsid (util-linux) on $host"
fi

# --- what is on the host now: one read ----------------------------------------------------------
# Lines "sha HASH PATH", "dir MODE:OWNER:GROUP PATH" ("-" when absent) and "flag yes NAME".
declare -A have=()
snapshot() {
  local s="" f kind val path
  for f in "$bin" "$env_file" "$tls_dir/fullchain.pem" "$tls_dir/privkey.pem" "$unit" "$ctl" "$hook" \
    "$live/fullchain.pem"; do
    s+="h=\$(sha256sum $(q "$f") 2>/dev/null | cut -d' ' -f1); echo \"sha \${h:--} \"$(q "$f");"$'\n'
  done
  for f in "$bin_dir" "$etc" "$tls_dir" "$state" "$data" "${ctl%/*}" "${hook%/*}"; do
    s+="m=\$(stat -c %a:%U:%G $(q "$f") 2>/dev/null); echo \"dir \${m:--} \"$(q "$f");"$'\n'
  done
  s+="getent passwd $SERVICE_USER >/dev/null && echo flag yes user;"$'\n'
  s+="test -e $(q "$secret") && echo flag yes secret;"$'\n'
  s+="command -v certbot >/dev/null && echo flag yes certbot;"$'\n'
  s+="test -e $(q "$live/fullchain.pem") && echo flag yes live;"$'\n'
  s+="systemctl is-enabled natter 2>/dev/null | grep -qx enabled && echo flag yes enabled;"$'\n'
  s+="true"
  while read -r kind val path; do have["$kind $path"]=$val; done < <(look "$s")
}
snapshot
known() { [ "${have[flag $1]:-}" = yes ]; }

# --- files, each written only when it differs ---------------------------------------------------
changed=()      # paths written in this run (restored from PATH.prev on rollback)
cert_changed="" restart=""
sha_local() { sha256sum "$1" | cut -d' ' -f1; }
sha_remote() { [ "${have[sha $1]:--}" = - ] || echo "${have[sha $1]}"; }
# put LOCAL PATH MODE OWNER:GROUP — keeps the previous content as PATH.prev.
put() {
  [ "$(sha_local "$1")" != "$(sha_remote "$2")" ] || return 1
  note "installing $2"
  local p; p=$(q "$2")
  if [ -n "$dry_run" ]; then echo "[dry-run] upload: $1 -> $2 ($(wc -c <"$1") bytes, mode $3, $4)"; return 0; fi
  # `put` runs inside `&&` lists, where set -e does not apply: a failed upload must stop here.
  "${ssh_cmd[@]}" "$sudo sh -c $(q "cat > $p.new && chown $4 $p.new && chmod $3 $p.new &&
    { [ ! -e $p ] || cp -p $p $p.prev; } && mv $p.new $p")" <"$1" ||
    die "$EXIT_REFUSED" "cannot install $2 on the host (nothing restarted; files installed so far: ${changed[*]:-none})"
  changed+=("$2")
}
# dir PATH MODE OWNER:GROUP
dir() {
  [ "${have[dir $1]:--}" = "${2#0}:$3" ] ||
    act "install -d -m $2 -o ${3%:*} -g ${3#*:} $(q "$1")"
}

known user ||
  act "useradd --system --user-group --home-dir $(q "$state") --no-create-home --shell /usr/sbin/nologin $SERVICE_USER"
dir "$bin_dir" 0755 root:root
dir "$etc" 0750 "root:$SERVICE_USER"
dir "$tls_dir" 0750 "root:$SERVICE_USER"
known secret ||
  act "umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \\n' > $(q "$secret").new &&
    chown $SERVICE_USER:$SERVICE_USER $(q "$secret").new && mv $(q "$secret").new $(q "$secret")"

if [ -n "$domain" ]; then
  known certbot || die "$EXIT_REFUSED" "--letsencrypt: install certbot on $host first"
  if ! known live; then
    act "certbot certonly --standalone --non-interactive --agree-tos --register-unsafely-without-email -d $(q "$domain")"
    have["sha $live/fullchain.pem"]=new
  fi
  dir "$(dirname "$hook")" 0755 root:root
  render certbot-hook.in hook
  put "$work/hook" "$hook" 0755 root:root || true
  [ "$(sha_remote "$live/fullchain.pem")" = "$(sha_remote "$tls_dir/fullchain.pem")" ] || { act "$(q "$hook")"; cert_changed=1; }
else
  put "$cert" "$tls_dir/fullchain.pem" 0640 "root:$SERVICE_USER" && cert_changed=1
  put "$key" "$tls_dir/privkey.pem" 0640 "root:$SERVICE_USER" && cert_changed=1
fi

cat >"$work/env" <<EOF
# Written by deploy.sh (every run): your own NATTER_* settings go in $local_env.
NATTER_LISTEN=$listen
NATTER_CERT=$tls_dir/fullchain.pem
NATTER_KEY=$tls_dir/privkey.pem
NATTER_DATA=$data
NATTER_JWT_SECRET_FILE=$secret
EOF
put "$work/env" "$env_file" 0640 "root:$SERVICE_USER" && restart=1
[ "${data%/*}" != "$state" ] || dir "$state" 0750 "$SERVICE_USER:$SERVICE_USER"
dir "$data" 0750 "$SERVICE_USER:$SERVICE_USER"
if [ "$manager" = systemd ]; then
  render natter.service.in unit
  put "$work/unit" "$unit" 0644 root:root && { act "systemctl daemon-reload"; restart=1; }
  known enabled || act "systemctl enable natter"
else
  dir "$(dirname "$ctl")" 0755 root:root
  render natterctl.in natterctl
  put "$work/natterctl" "$ctl" 0755 root:root && restart=1
fi
if [ -r "$binary" ] || [ -z "$dry_run" ]; then
  put "$binary" "$bin" 0755 root:root && restart=1
else
  note "would install $binary as $bin when it differs"
fi

# --- (re)start, health, rollback ----------------------------------------------------------------
if [ "$manager" = systemd ]; then
  # A unit that failed too often in a row is held back by its start limit: restart clears it.
  ctl_cmd() {
    if [ "$1" = restart ]; then act "systemctl reset-failed natter 2>/dev/null; systemctl restart natter"
    else act "systemctl $1 natter"; fi
  }
  running() { look 'systemctl is-active --quiet natter'; }
  log_tail() { look 'journalctl -u natter -n 40 --no-pager' || true; }
else
  ctl_cmd() { act "$(q "$ctl") $1"; }
  running() { look "$(q "$ctl") status >/dev/null"; }
  log_tail() { look "tail -n 40 $(q "$log")" || true; }
fi
healthy() {
  local deadline=$(($(date +%s) + HEALTH_SECS))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    curl -fsS --max-time 3 ${ca:+--cacert "$ca"} -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

# True once natter serves the first certificate of PEM (without openssl here: not checked).
serves() {
  command -v openssl >/dev/null || return 0
  local want got deadline=$(($(date +%s) + HEALTH_SECS))
  want=$(openssl x509 -in "$1" -outform DER | sha256sum)
  while [ "$(date +%s)" -lt "$deadline" ]; do
    got=$(openssl s_client -connect "${domain:-$host}:$port" ${domain:+-servername "$domain"} </dev/null 2>/dev/null |
      openssl x509 -outform DER 2>/dev/null | sha256sum)
    [ "$want" != "$got" ] || return 0
    sleep 0.5
  done
  return 1
}
# Puts back PATH.prev for every file written in this run; false when there was none.
restore_changed() {
  local f restored=""
  for f in "${changed[@]}"; do
    look "test -e $(q "$f").prev" || continue
    note "rolling back $f"
    act "mv $(q "$f") $(q "$f").failed && cp -p $(q "$f").prev $(q "$f")"
    restored=1
  done
  [ -n "$restored" ]
}

reloaded=""
if [ -n "$restart" ] || ! running; then
  note "restarting natter"
  ctl_cmd restart || true
elif [ -n "$cert_changed" ]; then
  note "new certificate: reloading natter (open connections stay up)"
  ctl_cmd reload || {
    log_tail >&2
    die "$EXIT_NOT_RELOADED" "the reload failed (see the log above); the new certificate files are in place"
  }
  reloaded=1
elif [ ${#changed[@]} -eq 0 ]; then
  note "nothing changed"
fi
[ -z "$dry_run" ] || { note "dry run: nothing written"; exit 0; }
if healthy; then
  if [ -n "$reloaded" ] && [ -n "$cert" ] && ! serves "$cert"; then
    note "natter still serves the old certificate after the reload; log tail:"
    log_tail >&2
    restore_changed || true
    die "$EXIT_NOT_RELOADED" "the new certificate was refused (see the log); the files in use are back, kept as *.failed"
  fi
  note "natter is healthy at $url ($(($(date +%s) - start_time)) s)"
  exit 0
fi
note "natter is not healthy at $url after $HEALTH_SECS s; log tail:"
log_tail >&2
restore_changed || die "$EXIT_DOWN" "nothing to roll back to"
[ "$manager" != systemd ] || act "systemctl daemon-reload"
ctl_cmd restart || true
healthy || { log_tail >&2; die "$EXIT_DOWN" "the rolled-back version is not healthy either"; }
die "$EXIT_ROLLED_BACK" "rolled back: the previous version is healthy at $url; the failed files are kept as *.failed"
