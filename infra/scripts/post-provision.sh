#!/usr/bin/env bash
# Prepare the database, as the PostgreSQL Microsoft Entra administrator, after the infrastructure is
# provisioned and before the code runs:
#   1. create the app's database role, named after the Function App and mapped to its managed identity
#      with pgaadauth_create_principal_with_oid(<app>, <object id>, 'service', false, false): not an
#      administrator (refuse to go on if an older deployment made it one, see docs/deploy.md);
#   2. create the database (single-node server) if it does not exist yet, so that the administrator
#      owns it and its schema public (PostgreSQL 15+ lets only the database owner create objects there);
#      an elastic cluster has exactly one database, postgres;
#   3. python -m shared.cli migrate: schema migrations and the embedding model (row and HNSW index);
#   4. python -m shared.cli grant-app-role <app>: CONNECT, USAGE on public, DML on the app's tables
#      (and on tables later migrations create), nothing else.
# It opens nothing: it needs a network path to the server (public mode: your address in
# clientIpAddress / AZURE_CLIENT_IP_ADDRESS, or Cloud Shell; private mode: a machine in the virtual
# network, or clientIpAddress) and an `az login` as the administrator (or a member of the admin group).
#
#   - azd runs it as the postprovision hook (azure.yaml), with the deployment outputs in the environment.
#   - standalone: infra/scripts/post-provision.sh -g <resource-group> [-d <deployment-name>]
#
# Environment: PYTHON (the interpreter with requirements.txt installed; default .venv/bin/python if it
# exists, else python3), PGSSLROOTCERT (overrides the CA roots psql trusts).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

usage() {
  cat <<'EOF'
Usage: post-provision.sh [-g RESOURCE_GROUP] [-d DEPLOYMENT_NAME]

  -g  resource group of the deployment (default: $AZURE_RESOURCE_GROUP, set by azd)
  -d  name of the `az deployment group` deployment to read outputs from when they are not in the
      environment (default: the latest deployment in the group that has the outputs)

Requires the Azure CLI signed in as the PostgreSQL Entra administrator (or a member of the admin
group), psql, and a Python environment with requirements.txt installed (PYTHON=...).
EOF
}

# shellcheck source=lib.sh
source "$here/lib.sh"
parse_args post-provision "$@"

fail() {
  echo "post-provision: $*" >&2
  exit 1
}

app_role="$(setting AZURE_FUNCTION_APP_NAME)"
app_oid="$(setting AZURE_FUNCTION_APP_PRINCIPAL_ID)"
db_host="$(setting DATABASE_HOST)"
db_name="$(setting DATABASE_NAME)"
admin="$(setting DATABASE_ADMIN_NAME)"
vision_endpoint="$(setting VISION_ENDPOINT)"
vision_api_version="$(setting VISION_API_VERSION)"
vision_model_version="$(setting VISION_MODEL_VERSION)"

# These values end up in SQL and connection strings: accept only the shapes Azure gives them.
[[ "$app_role" =~ ^[A-Za-z0-9-]+$ ]] || fail "unexpected Function App name '$app_role'"
[[ "$app_oid" =~ ^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$ ]] || fail "unexpected principal ID '$app_oid'"
[[ "$db_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || fail "unexpected database name '$db_name'"
[[ "$db_host" =~ ^[A-Za-z0-9.-]+$ ]] || fail "unexpected database host '$db_host'"
[[ -n "$admin" && "$admin" != *"'"* && "$admin" != *\\* ]] || fail "unexpected administrator name '$admin'"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="python3"; fi
fi

# Percent-encode a URI component (the administrator is often user@domain or a group name with spaces).
urlencode() {
  local LC_ALL=C s="$1" out="" c i hex
  for ((i = 0; i < ${#s}; i++)); do
    c="${s:i:1}"
    case "$c" in
      [A-Za-z0-9._~-]) out+="$c" ;;
      *) printf -v hex '%%%02X' "'$c"; out+="$hex" ;;
    esac
  done
  printf '%s' "$out"
}

SYSTEM_CA_BUNDLES=(/etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem)

# CA roots for psql. sslrootcert=system needs libpq 16 or later; older clients get the system bundle
# file instead. Either way sslmode=verify-full checks the server's certificate and host name.
psql_root_cert() {
  local major file
  if [[ -n "${PGSSLROOTCERT:-}" ]]; then printf '%s' "$PGSSLROOTCERT"; return 0; fi
  major="$(psql --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')"
  if [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 16)); then printf 'system'; return 0; fi
  for file in "${SYSTEM_CA_BUNDLES[@]}"; do
    if [[ -f "$file" ]]; then printf '%s' "$file"; return 0; fi
  done
  fail "psql $major cannot use sslrootcert=system and no CA bundle was found: set PGSSLROOTCERT to one"
}

# psycopg's binary wheel bundles its own OpenSSL, whose default CA location does not exist on most
# machines, so sslrootcert=system finds no roots unless SSL_CERT_FILE or SSL_CERT_DIR says where they
# are (checked with psycopg-binary 3.3 / libpq 18). Point it at certifi's bundle (installed with
# requests), or at the system bundle.
python_ca_file() {
  local file
  if file="$("$python" -c 'import certifi; print(certifi.where())' 2>/dev/null)" && [[ -n "$file" ]]; then
    printf '%s' "$file"
    return 0
  fi
  for file in "${SYSTEM_CA_BUNDLES[@]}"; do
    if [[ -f "$file" ]]; then printf '%s' "$file"; return 0; fi
  done
  return 1
}

echo "post-provision: server $db_host, database $db_name, administrator $admin, app role $app_role"

PGPASSWORD="$(az account get-access-token --resource-type oss-rdbms --query accessToken -o tsv)"
export PGPASSWORD
root_cert="$(psql_root_cert)"

# run_sql DATABASE STEP: run the SQL on stdin as the administrator; STEP names it in errors (and tests).
run_sql() {
  local database="$1" step="$2" out
  if ! out="$({ printf -- '-- step: %s\n' "$step"; cat; } | psql \
    "host=$db_host port=5432 dbname=$database user='$admin' sslmode=verify-full sslrootcert=$root_cert connect_timeout=30" \
    -X -q -A -t -F '|' -v ON_ERROR_STOP=1 \
    -v app_role="$app_role" -v app_oid="$app_oid" -v db_name="$db_name" \
    -v label="aadauth,oid=$app_oid,type=service" -f -)"; then
    fail "$step failed on $db_host/$database as $admin. Is your address allowed through the firewall (clientIpAddress / AZURE_CLIENT_IP_ADDRESS) and are you signed in (az login) as the administrator or a member of its group?"
  fi
  printf '%s\n' "$out"
}

# 1. The app's role.
state="$(run_sql postgres role-state <<'SQL'
SELECT 'role', count(*) FROM pg_catalog.pg_roles WHERE rolname = :'app_role';
SELECT 'admin', count(*)
  FROM pg_catalog.pg_auth_members m
  JOIN pg_catalog.pg_roles r ON r.oid = m.member
  JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
 WHERE r.rolname = :'app_role' AND g.rolname = 'azure_pg_admin';
SELECT 'principal', p.* FROM pg_catalog.pgaadauth_list_principals(false) AS p;
SQL
)"
role_count="$(printf '%s\n' "$state" | awk -F'|' '$1 == "role" { print $2 }')"
admin_count="$(printf '%s\n' "$state" | awk -F'|' '$1 == "admin" { print $2 }')"
mapped_oid="$(printf '%s\n' "$state" | awk -F'|' -v r="$app_role" '$1 == "principal" && $2 == r { print $4 }')"

if [[ "$admin_count" != "0" && -n "$admin_count" ]]; then
  fail "role $app_role is a member of azure_pg_admin (an earlier version of this template made the app an Entra administrator). Follow 'Upgrading from the app-as-administrator layout' in docs/deploy.md, then run this again."
fi
if [[ "$role_count" == "0" ]]; then
  run_sql postgres create-role >/dev/null <<'SQL'
SELECT * FROM pg_catalog.pgaadauth_create_principal_with_oid(:'app_role', :'app_oid', 'service', false, false);
SQL
  echo "post-provision: created role $app_role for the app's managed identity"
elif [[ "$(lower "$mapped_oid")" != "$(lower "$app_oid")" ]]; then
  # Same app name, new identity (the app was recreated): point the role at the current object ID.
  run_sql postgres relabel-role >/dev/null <<'SQL'
SECURITY LABEL FOR "pgaadauth" ON ROLE :"app_role" IS :'label';
SQL
  echo "post-provision: role $app_role now maps to object ID $app_oid"
else
  echo "post-provision: role $app_role exists"
fi

# 2. The database, owned by the administrator.
if [[ "$db_name" != "postgres" ]]; then
  exists="$(run_sql postgres database-exists <<'SQL'
SELECT count(*) FROM pg_catalog.pg_database WHERE datname = :'db_name';
SQL
)"
  if [[ "$exists" == "0" ]]; then
    run_sql postgres create-database >/dev/null <<'SQL'
CREATE DATABASE :"db_name";
SQL
    echo "post-provision: created database $db_name"
  fi
fi

# 3 and 4. Migrations and the app's grants, as the administrator (a token from the Azure CLI login).
ca_file="${SSL_CERT_FILE:-}"
if [[ -z "$ca_file" && -z "${SSL_CERT_DIR:-}" ]]; then
  ca_file="$(python_ca_file)" || fail "no CA bundle for Python: pip install certifi, or set SSL_CERT_FILE"
fi
run_cli() {
  (
    if [[ -n "$ca_file" ]]; then export SSL_CERT_FILE="$ca_file"; fi
    unset VISION_KEY PGPASSWORD  # the CLI gets its own token (DefaultAzureCredential)
    export DATABASE_URL="postgresql://$(urlencode "$admin")@$db_host:5432/$db_name?sslmode=verify-full&sslrootcert=system"
    export DATABASE_AUTH=entra DATABASE_POOL_MAX=2
    export EMBEDDING_PROVIDER=azure-vision VISION_ENDPOINT="$vision_endpoint"
    export VISION_API_VERSION="$vision_api_version" VISION_MODEL_VERSION="$vision_model_version"
    cd "$repo"
    "$python" -m shared.cli "$@"
  ) || fail "python -m shared.cli $* failed"
}
run_cli migrate
run_cli grant-app-role "$app_role"
echo "post-provision: database $db_name is migrated and $app_role has its grants"
