"""The Bicep in infra/ parses, passes checkov, and provisions what the product needs, least privilege.

Azure and the Bicep CLI are not available here, so the templates are parsed with pycep (the parser
checkov uses) and the assertions read the parsed structure: property values, not string presence.
Where a value is computed (connection and rate budgets, defaults of mapped parameters), a small
evaluator runs the parsed expression. The scripts run against a fake `az`, `azd`, `psql` and `python`
on PATH that record their calls.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from pycep import BicepParser

from shared.settings import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
SCRIPTS = INFRA / "scripts"
POST_DEPLOY = SCRIPTS / "post-deploy.sh"
POST_PROVISION = SCRIPTS / "post-provision.sh"
PRE_PROVISION = SCRIPTS / "pre-provision.sh"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

VISION_REGIONS = {
    "eastus", "westus", "westus2", "francecentral", "northeurope", "westeurope", "swedencentral",
    "switzerlandnorth", "australiaeast", "southeastasia", "koreacentral", "japaneast",
}  # fmt: skip
# Premium SSD sizes of a flexible server, GiB (P4 ... P80; 4095 is the largest that scales online).
STORAGE_TIERS = [32, 64, 128, 256, 512, 1024, 2048, 4095, 4096, 8192, 16384, 32767]
B1MS_USER_CONNECTIONS = 35  # "Limits in Azure Database for PostgreSQL": B1ms 50 max, 15 reserved
VISION_S1_CALLS_PER_SECOND = 20

ROLE_STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ROLE_STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ROLE_STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
ROLE_STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
ROLE_STORAGE_BLOB_DELEGATOR = "db58b8e5-c6ad-4a2a-8342-4190687cbf4a"
ROLE_COGNITIVE_SERVICES_USER = "a97b65f3-24c7-4388-baec-2e87135dc908"
ROLE_MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
STORAGE_DATA_ROLES = {
    ROLE_STORAGE_BLOB_DATA_OWNER,
    ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR,
    ROLE_STORAGE_BLOB_DATA_READER,
    ROLE_STORAGE_QUEUE_DATA_CONTRIBUTOR,
    ROLE_STORAGE_TABLE_DATA_CONTRIBUTOR,
    ROLE_STORAGE_BLOB_DELEGATOR,
}

# Settings in DEFAULTS that Azure gets in another form. Anything else in DEFAULTS must be an app setting.
IDENTITY_CONNECTIONS = {
    # Identity-based connection: <name>__blobServiceUri (+ __queueServiceUri for the blob trigger)
    # replaces the connection string.
    "ImagesStorage",
}
DELIBERATELY_UNSET = {
    # Keyless: without a key the app sends an Entra token; the account has local auth disabled.
    "VISION_KEY",
    # The local CLIP provider is for running without Azure; the deployment uses azure-vision.
    "CLIP_MODEL_PATH",
    "CLIP_MODEL_NAME",
    "CLIP_THREADS",
}

# main.parameters.json: the azd environment variable behind each mapped parameter.
AZD_MAPPINGS = {
    "environmentName": "${AZURE_ENV_NAME}",
    "principalId": "${AZURE_PRINCIPAL_ID}",
    "principalType": "${AZURE_PRINCIPAL_TYPE=User}",
    "visionLocation": "${AZURE_VISION_LOCATION}",
    "networkMode": "${AZURE_NETWORK_MODE}",
    "clientIpAddress": "${AZURE_CLIENT_IP_ADDRESS}",
    "postgresAdminObjectId": "${AZURE_POSTGRES_ADMIN_OBJECT_ID}",
    "postgresAdminName": "${AZURE_POSTGRES_ADMIN_NAME}",
    "postgresAdminType": "${AZURE_POSTGRES_ADMIN_TYPE}",
    "postgresCurrentStorageSizeGB": "${AZURE_POSTGRES_CURRENT_STORAGE_GB}",
}


# --- helpers --------------------------------------------------------------------------------------


def unquote(key: str) -> str:
    """pycep keeps the quotes of quoted object keys ('azd-env-name')."""
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == "'" else key


def body(item: dict[str, Any]) -> dict[str, Any]:
    """The resource's or module's object, whether or not it is deployed under an `if (...)` condition."""
    config: dict[str, Any] = item["config"]
    if set(config) == {"condition", "config"}:
        return config["config"]  # type: ignore[no-any-return]
    return config


def condition(item: dict[str, Any]) -> Any:
    config = item["config"]
    return config["condition"] if set(config) == {"condition", "config"} else None


def walk(node: Any) -> Iterator[Any]:
    """Every value nested in a parsed structure, the node itself included."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def param_default(template: dict[str, Any], name: str) -> Any:
    return template["parameters"][name].get("default")


def decorator(template: dict[str, Any], name: str, kind: str) -> Any:
    for deco in template["parameters"][name]["decorators"]:
        if deco["type"] == kind:
            return deco["argument"]
    return None


def evaluate(node: Any, template: dict[str, Any], given: Mapping[str, Any] | None = None) -> Any:
    """Value of a parsed Bicep expression: parameters take `given` or their default, variables recurse.

    Covers the expressions the budget and default tests need (arithmetic, comparisons, conditionals,
    string functions); anything else raises, so a test never passes on an expression it did not read.
    """
    given = given or {}

    def ev(n: Any) -> Any:
        if isinstance(n, bool | int) or n is None:
            return n
        if isinstance(n, list):
            return [ev(x) for x in n]
        if isinstance(n, str):
            if n in given:
                return given[n]
            if n in template.get("parameters", {}):
                return param_default(template, n)
            if n in template.get("variables", {}):
                return ev(template["variables"][n]["value"])
            # A string literal, with '${name}' interpolations of parameters and variables.
            return re.sub(r"\$\{(\w+)\}", lambda m: str(ev(m[1])), n)
        if "operator" in n:
            op, a = n["operator"]["type"], n["operator"]["operands"]
            if op == "conditional":
                return ev(a["true_value"]) if ev(a["condition"]) else ev(a["false_value"])
            if op == "not":
                return not ev(a["bool_value"])
            x, y = ev(a["operand_1"]), ev(a["operand_2"])
            binary = {
                "divide": lambda: x // y,
                "multiply": lambda: x * y,
                "modulo": lambda: x % y,
                "equals": lambda: x == y,
                "or": lambda: x or y,
                "and": lambda: x and y,
            }
            return binary[op]()
        if "function" in n:
            fn, p = n["function"]["type"], n["function"]["parameters"]
            functions = {
                "max": lambda: max(ev(v) for v in p.values() if v is not None),
                "min": lambda: min(ev(v) for v in p.values() if v is not None),
                "empty": lambda: not ev(p["item_to_test"]),
                "starts_with": lambda: str(ev(p["string_to_search"])).startswith(ev(p["string_to_find"])),
                "trim": lambda: str(ev(p["string_to_trim"])).strip(),
                "to_lower": lambda: str(ev(p["string_to_change"])).lower(),
                "contains": lambda: ev(p["item_to_find"]) in ev(p["container"]),
                "int": lambda: int(ev(p["value_to_convert"])),
                "string": lambda: str(ev(p["value_to_convert"])),
            }
            return functions[fn]()
        raise AssertionError(f"cannot evaluate {json.dumps(n)[:200]}")

    return ev(node)


@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    parser = BicepParser()
    return {
        path.relative_to(INFRA).as_posix(): cast(dict[str, Any], parser.parse(file_path=path)) for path in BICEP_FILES
    }


@pytest.fixture(scope="module")
def main(templates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return templates["main.bicep"]


def resources_of(templates: dict[str, dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    found = [
        resource
        for template in templates.values()
        for resource in template.get("resources", {}).values()
        if resource["type"].lower() == type_.lower() and not resource["existing"]
    ]
    assert found, f"no {type_} resource in infra/"
    return found


def only(templates: dict[str, dict[str, Any]], type_: str) -> dict[str, Any]:
    found = resources_of(templates, type_)
    assert len(found) == 1, f"expected one {type_}, found {len(found)}"
    return found[0]


def module_params(main: dict[str, Any], module_name: str) -> dict[str, Any]:
    return body(main["modules"][module_name])["params"]  # type: ignore[no-any-return]


def module_file(main: dict[str, Any], module_name: str) -> str:
    return main["modules"][module_name]["detail"]["path"]  # type: ignore[no-any-return]


def module_template(templates: dict[str, dict[str, Any]], main: dict[str, Any], module_name: str) -> dict[str, Any]:
    return templates[module_file(main, module_name)]


def app_settings(main: dict[str, Any]) -> dict[str, Any]:
    return main["variables"]["appSettings"]["value"]  # type: ignore[no-any-return]


def refs(node: Any) -> str:
    """The parsed expression as text, for 'does it mention X' checks."""
    return json.dumps(node)


# --- the templates parse and pass checkov ---------------------------------------------------------


def test_infra_has_the_expected_files() -> None:
    names = {path.relative_to(INFRA).as_posix() for path in BICEP_FILES}
    assert {"main.bicep", "subscriptions.bicep"} <= names
    assert (INFRA / "main.parameters.json").is_file()
    assert (INFRA / "abbreviations.json").is_file()
    for script in (PRE_PROVISION, POST_PROVISION, POST_DEPLOY):
        assert script.is_file()
        assert os.access(script, os.X_OK), f"{script.name} must be executable (azd runs it directly)"
    assert not (INFRA / "modules" / "postgres-admin.bicep").exists(), "the app-as-administrator module is gone"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    template = BicepParser().parse(file_path=path)
    assert template.get("resources") or template.get("modules"), f"{path} declares nothing"


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    checkov = Path(sys.executable).with_name("checkov")
    executable = str(checkov) if checkov.exists() else shutil.which("checkov")
    if executable is None:
        pytest.fail("checkov is not installed: pip install -r requirements-dev.txt")
    # --skip-download: no calls to the Prisma Cloud API; the bundled checks are enough.
    result = subprocess.run(
        [executable, "-d", "infra", "--framework", "bicep", "-o", "json", "--skip-download"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.stdout.strip(), f"checkov printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    if isinstance(report, list):  # several frameworks: one report each
        (report,) = [r for r in report if r.get("check_type") == "bicep"]
    return report  # type: ignore[no-any-return]


def test_checkov_reports_no_failed_checks(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in checkov_report["results"]["failed_checks"]]
    assert failed == [], "checkov failed checks:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0, "checkov could not parse some Bicep files (they would go unchecked)"
    assert summary["passed"] > 0


def test_every_checkov_skip_is_justified_next_to_the_resource(checkov_report: dict[str, Any]) -> None:
    for check in checkov_report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) >= 20 and reason != "No comment provided", f"{check['check_id']} skipped without a reason"
        text = (INFRA / check["file_path"].lstrip("/")).read_text()
        assert f"// checkov:skip={check['check_id']}:" in text


# --- 1. PostgreSQL: the administrator is a person or a group, the app an ordinary role ------------


def test_postgres_uses_entra_only_and_the_pinned_api(templates: dict[str, dict[str, Any]]) -> None:
    for template in templates.values():
        for resource in template.get("resources", {}).values():
            if resource["type"].startswith("Microsoft.DBforPostgreSQL/"):
                assert resource["api_version"] == "2025-08-01", resource["type"]
    server = body(only(templates, "Microsoft.DBforPostgreSQL/flexibleServers"))
    auth = server["properties"]["authConfig"]
    assert auth["activeDirectoryAuth"] == "Enabled"
    assert auth["passwordAuth"] == "Disabled"
    every_key = {key for node in walk(templates) if isinstance(node, dict) for key in node}
    assert "administratorLoginPassword" not in every_key


def test_the_function_app_is_not_a_postgres_administrator(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    (admin,) = resources_of(templates, "Microsoft.DBforPostgreSQL/flexibleServers/administrators")
    admin_body = body(admin)
    assert admin_body["name"] == "administratorObjectId"
    props = admin_body["properties"]
    assert (props["principalType"], props["principalName"]) == ("administratorType", "administratorName")
    assert props["tenantId"]["function"]["type"] == "tenant"
    params = module_params(main, "postgres")
    assert (params["administratorObjectId"], params["administratorName"], params["administratorType"]) == (
        "postgresAdminId",
        "postgresAdminRole",
        "postgresAdminPrincipalType",
    )
    # Nothing the administrator is made of leads back to the Function App's identity.
    for name in ("postgresAdminId", "postgresAdminRole", "postgresAdminPrincipalType"):
        expression = refs(main["variables"][name]["value"])
        assert "functionApp" not in expression and "appPrincipalId" not in expression, name
    for name in ("administratorObjectId", "administratorName", "administratorType"):
        assert "functionApp" not in refs(params[name])


def test_the_administrator_is_the_deployer_or_a_group_mapped_for_azd(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    admin_id, admin_name, admin_type = (
        main["variables"][n]["value"] for n in ("postgresAdminId", "postgresAdminRole", "postgresAdminPrincipalType")
    )
    # Default: you, as a user, under <environment>-admin.
    assert evaluate(admin_id, main, {"principalId": "11111111-1111-1111-1111-111111111111"}) == (
        "11111111-1111-1111-1111-111111111111"
    )
    assert evaluate(admin_type, main, {"principalId": "x"}) == "User"
    assert evaluate(admin_type, main, {"principalType": "ServicePrincipal"}) == "ServicePrincipal"
    assert evaluate(admin_name, main, {"environmentName": "dev"}) == "dev-admin"
    # A group given by object ID: Group unless said otherwise; placeholders count as not given.
    group = {"postgresAdminObjectId": "22222222-2222-2222-2222-222222222222", "postgresAdminName": "db-admins"}
    assert evaluate(admin_id, main, group) == group["postgresAdminObjectId"]
    assert evaluate(admin_type, main, group) == "Group"
    assert evaluate(admin_name, main, group) == "db-admins"
    placeholders = {"postgresAdminObjectId": "${AZURE_POSTGRES_ADMIN_OBJECT_ID}", "principalId": "abc"}
    assert evaluate(admin_id, main, placeholders) == "abc"
    # An Entra-only server without an administrator would lock everyone out: the module refuses it.
    postgres = module_template(templates, main, "postgres")
    assert decorator(postgres, "administratorObjectId", "min_length") == 36
    assert set(decorator(postgres, "administratorType", "allowed")) == {"User", "Group", "ServicePrincipal"}


def test_the_app_logs_in_as_its_own_role_with_full_tls_verification(main: dict[str, Any]) -> None:
    url = app_settings(main)["DATABASE_URL"]
    match = re.fullmatch(r"postgresql://(?P<user>[^@/]+)@(?P<host>[^/]+)/(?P<db>[^?]+)\?(?P<query>.+)", url)
    assert match, url
    assert match["user"] == "${functionAppName}", "the app's role is named after the app"
    assert ":" not in match["user"], "DATABASE_URL must not carry a password"
    assert match["host"] == "${postgres.outputs.host}:5432"
    query = dict(part.split("=", 1) for part in match["query"].split("&"))
    assert query == {"sslmode": "verify-full", "sslrootcert": "system"}


def test_the_database_is_left_to_the_administrator(templates: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    # Created by post-provision.sh as the administrator, who then owns it and its schema public.
    types = {r["type"] for t in templates.values() for r in t.get("resources", {}).values()}
    assert "Microsoft.DBforPostgreSQL/flexibleServers/databases" not in types
    database = main["variables"]["databaseName"]["value"]
    assert evaluate(database, main) == "imagesearch"
    assert evaluate(database, main, {"postgresElasticCluster": True}) == "postgres"


def test_postgres_defaults_are_small_and_burstable(main: dict[str, Any]) -> None:
    assert param_default(main, "postgresSkuName") == "Standard_B1ms"
    assert param_default(main, "postgresSkuTier") == "Burstable"
    assert param_default(main, "postgresElasticCluster") is False


def test_vector_extension_is_allow_listed(templates: dict[str, dict[str, Any]]) -> None:
    configs = resources_of(templates, "Microsoft.DBforPostgreSQL/flexibleServers/configurations")
    extensions = [body(c) for c in configs if body(c)["name"] == "azure.extensions"]
    assert len(extensions) == 1
    assert "VECTOR" in extensions[0]["properties"]["value"].upper().split(",")
    assert extensions[0]["properties"]["source"] == "user-override"


# --- 2. Storage: nobody but the app holds a data role on the whole account ------------------------


def test_storage_account_is_keyless_private_and_tls12(templates: dict[str, dict[str, Any]]) -> None:
    props = body(only(templates, "Microsoft.Storage/storageAccounts"))["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True


def test_containers_are_private(templates: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    containers = resources_of(templates, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert {body(c)["name"] for c in containers} == {
        "imagesContainerName",
        "thumbnailsContainerName",
        "deploymentContainerName",
        "deadLetterContainerName",
    }
    for container in containers:
        assert body(container)["properties"]["publicAccess"] == "None"
    storage = module_params(main, "storage")
    assert storage["imagesContainerName"] == "imagesContainerName"
    assert param_default(main, "imagesContainerName") == DEFAULTS["IMAGES_CONTAINER"]
    assert storage["thumbnailsContainerName"] == "thumbnailsContainerName"
    assert param_default(main, "thumbnailsContainerName") == DEFAULTS["THUMBNAILS_CONTAINER"]


def role_assignments(templates: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """role (GUID), principal, scope (symbolic name) and deploy condition of every role assignment."""
    template = templates["modules/role-assignments.bicep"]
    roles = template["variables"]["roles"]["value"]
    found = []
    for resource in resources_of(templates, "Microsoft.Authorization/roleAssignments"):
        props = body(resource)["properties"]
        role = props["roleDefinitionId"]["function"]
        assert role["type"] == "subscription_resource_id"
        assert role["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        name = role["parameters"]["resource_name_1"]
        if isinstance(name, dict):  # roles.<name>
            operands = name["operator"]["operands"]
            assert operands["operand_1"] == "roles"
            name = roles[operands["operand_2"]]
        found.append(
            {
                "role": name,
                "principal": props["principalId"],
                "type": props["principalType"],
                "scope": body(resource)["scope"],
                "condition": condition(resource),
            }
        )
    return found


def test_app_identity_gets_the_roles_it_needs_and_no_redundant_one(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    app = {(a["role"], a["scope"]) for a in role_assignments(templates) if a["principal"] == "appPrincipalId"}
    assert app == {
        (ROLE_STORAGE_BLOB_DATA_OWNER, "storage"),  # host storage, deployment package, images
        (ROLE_STORAGE_QUEUE_DATA_CONTRIBUTOR, "storage"),
        (ROLE_STORAGE_TABLE_DATA_CONTRIBUTOR, "storage"),
        (ROLE_COGNITIVE_SERVICES_USER, "vision"),
        (ROLE_MONITORING_METRICS_PUBLISHER, "applicationInsights"),
    }
    # Storage Blob Data Owner includes generateUserDelegationKey/action: no Storage Blob Delegator.
    assert ROLE_STORAGE_BLOB_DELEGATOR not in {a["role"] for a in role_assignments(templates)}
    assert "principalId" in refs(module_params(main, "roleAssignments")["appPrincipalId"])


def test_no_data_role_for_the_deployer_on_the_host_storage_account(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    user = [a for a in role_assignments(templates) if a["principal"] == "userPrincipalId"]
    assert {(a["role"], a["scope"]) for a in user} == {
        (ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR, "imagesContainer"),
        (ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR, "thumbnailsContainer"),
        (ROLE_STORAGE_BLOB_DATA_READER, "deadLetterContainer"),
        (ROLE_COGNITIVE_SERVICES_USER, "vision"),
    }
    for assignment in user:
        assert assignment["scope"] != "storage", "an account-wide data role reaches azure-webjobs-secrets"
        assert "empty" in refs(assignment["condition"]) and "userPrincipalId" in refs(assignment["condition"])
        assert assignment["type"] == "userPrincipalType"
    # The container scopes are the containers of this account, by name.
    template = templates["modules/role-assignments.bicep"]
    for scope, name in (
        ("imagesContainer", "imagesContainerName"),
        ("thumbnailsContainer", "thumbnailsContainerName"),
        ("deadLetterContainer", "deadLetterContainerName"),
    ):
        container = template["resources"][scope]
        assert container["existing"] and container["config"]["name"] == name
        assert container["config"]["parent"] == "blobService"
    assert template["resources"]["blobService"]["config"]["parent"] == "storage"
    assert module_params(main, "roleAssignments")["userPrincipalId"] == "userPrincipalId"
    assert param_default(main, "principalId") == ""


# --- 3. No basic-auth publishing ------------------------------------------------------------------


def test_ftp_and_scm_basic_auth_publishing_are_disabled(templates: dict[str, dict[str, Any]]) -> None:
    policies = resources_of(templates, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body(p)["name"] for p in policies} == {"ftp", "scm"}
    for policy in policies:
        assert body(policy)["properties"] == {"allow": False}
        assert body(policy)["parent"] == "functionApp"
        assert policy["api_version"] == "2024-04-01"
        assert condition(policy) is None


# --- 4. Dead letters and diagnostics --------------------------------------------------------------


def test_both_event_subscriptions_dead_letter_with_the_topics_identity(templates: dict[str, dict[str, Any]]) -> None:
    template = templates["subscriptions.bicep"]
    dead_letter = template["variables"]["deadLetter"]["value"]
    assert dead_letter["identity"] == {"type": "SystemAssigned"}
    destination = dead_letter["deadLetterDestination"]
    assert destination["endpointType"] == "StorageBlob"
    assert destination["properties"]["blobContainerName"] == "deadLetterContainerName"
    assert refs(destination["properties"]["resourceId"]) == refs(
        {"operator": {"type": "property_accessor", "operands": {"operand_1": "storage", "operand_2": "id"}}}
    )
    subscriptions = resources_of(templates, "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    assert len(subscriptions) == 2
    events = set()
    for subscription in subscriptions:
        props = body(subscription)["properties"]
        assert props["deadLetterWithResourceIdentity"] == "deadLetter"
        assert "deadLetterDestination" not in props, "key-based dead-lettering cannot write to a keyless account"
        assert props["retryPolicy"] == {
            "maxDeliveryAttempts": "maxDeliveryAttempts",
            "eventTimeToLiveInMinutes": "eventTimeToLiveInMinutes",
        }
        assert props["filter"]["subjectBeginsWith"] == "subjectPrefix"
        assert props["destination"]["endpointType"] == "WebHook"
        events.update(props["filter"]["includedEventTypes"])
    assert events == {"Microsoft.Storage.BlobCreated", "Microsoft.Storage.BlobDeleted"}
    assert param_default(template, "eventTimeToLiveInMinutes") == 1440
    assert param_default(template, "maxDeliveryAttempts") == 30
    assert param_default(template, "deadLetterContainerName") == "eventgrid-deadletter"


def test_webhooks_target_the_functions_with_their_system_keys(templates: dict[str, dict[str, Any]]) -> None:
    template = templates["subscriptions.bicep"]
    urls = {
        body(r)["name"]: body(r)["properties"]["destination"]["properties"]["endpointUrl"]
        for r in template["resources"].values()
        if not r["existing"]
    }
    assert urls == {
        "${imagesContainerName}-blob-created": "https://${host}/runtime/webhooks/blobs"
        "?functionName=Host.Functions.${blobFunctionName}&code=${systemKeys.blobs_extension}",
        "${imagesContainerName}-blob-deleted": "https://${host}/runtime/webhooks/eventgrid"
        "?functionName=${deleteFunctionName}&code=${systemKeys.eventgrid_extension}",
    }
    keys = template["variables"]["systemKeys"]["value"]["operator"]["operands"]["operand_1"]["function"]
    assert keys["parameters"] == {
        "func_name": "listKeys",
        "resource_identifier": "${site.id}/host/default",
        "api_version": "2024-04-01",
    }
    assert param_default(template, "blobFunctionName") == "index_image"
    assert param_default(template, "deleteFunctionName") == "remove_deleted_image"
    assert template["variables"]["subjectPrefix"]["value"] == "/blobServices/default/containers/${imagesContainerName}/"


def test_the_topic_writes_dead_letters_to_its_container_only(templates: dict[str, dict[str, Any]]) -> None:
    topic = body(only(templates, "Microsoft.EventGrid/systemTopics"))
    assert topic["identity"] == {"type": "SystemAssigned"}
    topic_roles = [a for a in role_assignments(templates) if a["principal"] == "eventGridPrincipalId"]
    assert [(a["role"], a["scope"], a["condition"]) for a in topic_roles] == [
        (ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR, "deadLetterContainer", None)
    ]


def test_diagnostic_settings_send_postgres_storage_vision_and_event_grid_to_log_analytics(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    scopes = {}
    for path, template in templates.items():
        for resource in template.get("resources", {}).values():
            if resource["type"] == "Microsoft.Insights/diagnosticSettings":
                assert resource["api_version"] == "2021-05-01-preview"
                props = body(resource)["properties"]
                assert props["workspaceId"] == "logAnalyticsWorkspaceId"
                scopes[(path, body(resource)["scope"])] = props
    assert set(scopes) == {
        ("modules/postgres.bicep", "server"),
        ("modules/storage.bicep", "storage"),
        ("modules/storage.bicep", "blobService"),
        ("modules/vision.bicep", "vision"),
        ("modules/events.bicep", "systemTopic"),
    }
    for key in (("modules/postgres.bicep", "server"), ("modules/vision.bicep", "vision")):
        assert {"categoryGroup": "allLogs", "enabled": True} in scopes[key]["logs"]
    assert {"categoryGroup": "allLogs", "enabled": True} in scopes[("modules/storage.bicep", "blobService")]["logs"]
    for name in ("storage", "vision", "postgres", "events"):
        assert refs(module_params(main, name)["logAnalyticsWorkspaceId"]) == refs(
            {
                "operator": {
                    "type": "property_accessor",
                    "operands": {
                        "operand_1": "monitoring",
                        "operand_2": {
                            "operator": {
                                "type": "property_accessor",
                                "operands": {"operand_1": "outputs", "operand_2": "logAnalyticsId"},
                            }
                        },
                    },
                }
            }
        )


# --- 5. Networking: public by default, private on request -----------------------------------------


def test_public_mode_admits_azure_services_and_private_mode_does_not(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    postgres = module_template(templates, main, "postgres")
    rule = postgres["resources"]["allowAzureServicesRule"]
    assert body(rule)["properties"] == {"startIpAddress": "0.0.0.0", "endIpAddress": "0.0.0.0"}
    assert condition(rule) == "publicMode"
    access = body(postgres["resources"]["server"])["properties"]["network"]["publicNetworkAccess"]
    for mode, client, expected in (
        ("public", "", "Enabled"),
        ("private", "", "Disabled"),
        ("private", "203.0.113.7", "Enabled"),  # the client rule is then the only way in
    ):
        assert evaluate(access, postgres, {"networkMode": mode, "clientIpAddress": client}) == expected
    assert evaluate(postgres["variables"]["publicMode"]["value"], postgres, {"networkMode": "private"}) is False
    assert set(decorator(postgres, "networkMode", "allowed")) == {"public", "private"}

    vision = module_template(templates, main, "vision")
    props = body(vision["resources"]["vision"])["properties"]
    assert evaluate(props["publicNetworkAccess"], vision, {"networkMode": "private"}) == "Disabled"
    assert evaluate(props["publicNetworkAccess"], vision, {"networkMode": "public"}) == "Enabled"
    assert set(decorator(vision, "networkMode", "allowed")) == {"public", "private"}


def test_private_mode_joins_the_app_to_a_vnet_with_private_endpoints(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    assert param_default(main, "networkMode") == "public"
    mode = main["variables"]["effectiveNetworkMode"]["value"]
    assert evaluate(mode, main) == "public"
    assert evaluate(mode, main, {"networkMode": "${AZURE_NETWORK_MODE}"}) == "public"
    assert evaluate(mode, main, {"networkMode": "Private"}) == "private"
    for name in ("network", "postgresPrivateEndpoint", "visionPrivateEndpoint"):
        assert condition(main["modules"][name]) == "privateNetwork", name
    endpoints = {
        module_params(main, name)["groupId"]: module_params(main, name)
        for name in ("postgresPrivateEndpoint", "visionPrivateEndpoint")
    }
    assert set(endpoints) == {"postgresqlServer", "account"}
    assert "postgres" in refs(endpoints["postgresqlServer"]["targetResourceId"])
    assert "postgresZoneId" in refs(endpoints["postgresqlServer"]["privateDnsZoneId"])
    assert "vision" in refs(endpoints["account"]["targetResourceId"])
    assert "visionZoneId" in refs(endpoints["account"]["privateDnsZoneId"])
    assert "appSubnetId" in refs(module_params(main, "functionApp")["virtualNetworkSubnetId"])

    network = templates["modules/network.bicep"]
    zones = {body(z)["name"] for z in resources_of(templates, "Microsoft.Network/privateDnsZones")}
    assert zones == {"privatelink.postgres.database.azure.com", "privatelink.cognitiveservices.azure.com"}
    subnets = {s["name"]: s["properties"] for s in body(network["resources"]["vnet"])["properties"]["subnets"]}
    assert subnets["app"]["delegations"][0]["properties"]["serviceName"] == "Microsoft.App/environments"
    assert "networkSecurityGroup" in subnets["app"] and "networkSecurityGroup" in subnets["private-endpoints"]
    site = body(only(templates, "Microsoft.Web/sites"))
    assert site["properties"]["virtualNetworkSubnetId"]["operator"]["operands"]["false_value"] == (
        "virtualNetworkSubnetId"
    )


# --- 6. The Vision region: a default that deploys everywhere, settable from azd --------------------


def test_vision_location_defaults_to_a_vision_region_and_is_mapped_for_azd(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    vision = module_template(templates, main, "vision")
    assert set(decorator(vision, "location", "allowed")) == VISION_REGIONS
    assert module_params(main, "vision")["location"] == "effectiveVisionLocation"
    assert decorator(main, "visionLocation", "allowed") is None, "a placeholder or '' must not fail validation"
    assert set(evaluate("visionRegions", main)) == VISION_REGIONS
    location = main["variables"]["effectiveVisionLocation"]["value"]
    assert evaluate(location, main, {"location": "germanywestcentral"}) in VISION_REGIONS
    assert evaluate(location, main, {"location": "swedencentral"}) == "swedencentral"
    assert evaluate(location, main, {"location": "uksouth", "visionLocation": "${AZURE_VISION_LOCATION}"}) in (
        VISION_REGIONS
    )
    assert evaluate(location, main, {"location": "uksouth", "visionLocation": "WestEurope"}) == "westeurope"
    assert main["outputs"]["VISION_LOCATION"]["value"] == "effectiveVisionLocation"


def test_vision_account_is_keyless_with_a_custom_subdomain_and_no_identity(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    vision_file = module_template(templates, main, "vision")
    account = body(only(templates, "Microsoft.CognitiveServices/accounts"))
    assert account["kind"] == "ComputerVision"
    assert account["properties"]["customSubDomainName"] == "name"  # the unique account name
    assert account["properties"]["disableLocalAuth"] == "disableLocalAuth"
    assert param_default(vision_file, "disableLocalAuth") is True
    assert module_params(main, "vision")["disableLocalAuth"] == "visionDisableLocalAuth"
    assert param_default(main, "visionDisableLocalAuth") is True
    assert param_default(main, "visionSkuName") == "S1"
    assert "identity" not in account, "the Vision account calls nothing itself; an identity would be unused"


# --- 7 and 8. Storage size and autogrow -----------------------------------------------------------


def test_storage_size_is_a_tier_and_never_shrinks_a_grown_disk(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    postgres = module_template(templates, main, "postgres")
    assert decorator(main, "postgresStorageSizeGB", "allowed") == STORAGE_TIERS
    assert decorator(postgres, "storageSizeGB", "allowed") == STORAGE_TIERS
    storage = body(postgres["resources"]["server"])["properties"]["storage"]
    assert storage["storageSizeGB"] == "effectiveStorageSizeGB"
    size = postgres["variables"]["effectiveStorageSizeGB"]["value"]
    assert evaluate(size, postgres) == 32
    assert evaluate(size, postgres, {"currentStorageSizeGB": 64}) == 64  # grown by autogrow: keep it
    assert evaluate(size, postgres, {"storageSizeGB": 128, "currentStorageSizeGB": 64}) == 128
    # main.bicep turns the azd string into a number, '' and placeholders into 0.
    current = main["variables"]["currentStorageSizeGB"]["value"]
    assert evaluate(current, main) == 0
    assert evaluate(current, main, {"postgresCurrentStorageSizeGB": "${AZURE_POSTGRES_CURRENT_STORAGE_GB}"}) == 0
    assert evaluate(current, main, {"postgresCurrentStorageSizeGB": "64"}) == 64
    assert module_params(main, "postgres")["currentStorageSizeGB"] == "currentStorageSizeGB"


def test_autogrow_is_on_for_a_single_server_and_off_for_an_elastic_cluster(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    postgres = module_template(templates, main, "postgres")
    storage = body(postgres["resources"]["server"])["properties"]["storage"]
    assert storage["autoGrow"] == "effectiveAutoGrow"
    grow = postgres["variables"]["effectiveAutoGrow"]["value"]
    assert evaluate(grow, postgres) == "Enabled"
    assert evaluate(grow, postgres, {"elasticCluster": True}) == "Disabled"
    assert evaluate(grow, postgres, {"elasticCluster": True, "storageAutoGrow": True}) == "Disabled"
    assert evaluate(grow, postgres, {"storageAutoGrow": False}) == "Disabled"


def test_elastic_cluster_switch(templates: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    postgres = module_template(templates, main, "postgres")
    server = body(only(templates, "Microsoft.DBforPostgreSQL/flexibleServers"))
    cluster = server["properties"]["cluster"]["operator"]
    assert cluster["type"] == "conditional"
    assert cluster["operands"]["condition"] == "elasticCluster"
    assert cluster["operands"]["true_value"] == {"clusterSize": "clusterSize"}
    assert cluster["operands"]["false_value"] is None
    assert evaluate(postgres["variables"]["effectiveVersion"]["value"], postgres, {"elasticCluster": True}) == "17"
    params = module_params(main, "postgres")
    assert params["elasticCluster"] == "postgresElasticCluster"
    assert params["clusterSize"] == "postgresClusterSize"


# --- 9. principalType for azd ---------------------------------------------------------------------


def test_principal_type_is_mapped_for_azd_and_defaults_to_user(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    principal_type = main["variables"]["userPrincipalType"]["value"]
    assert evaluate(principal_type, main) == "User"
    assert evaluate(principal_type, main, {"principalType": ""}) == "User"  # azd, variable unset
    assert evaluate(principal_type, main, {"principalType": "${AZURE_PRINCIPAL_TYPE=User}"}) == "User"  # plain az
    assert evaluate(principal_type, main, {"principalType": "ServicePrincipal"}) == "ServicePrincipal"
    assert module_params(main, "roleAssignments")["userPrincipalType"] == "userPrincipalType"
    assert decorator(main, "principalType", "allowed") is None
    roles = templates["modules/role-assignments.bicep"]
    assert set(decorator(roles, "userPrincipalType", "allowed")) == {"User", "Group", "ServicePrincipal"}


def test_parameters_file_maps_the_azd_environment(main: dict[str, Any]) -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(parameters) <= set(main["parameters"])
    assert {name: p["value"] for name, p in parameters.items()} == AZD_MAPPINGS
    for name in AZD_MAPPINGS:
        # Strings only, and no @allowed: azd substitutes '' for an unset variable, plain
        # `az deployment` passes the placeholder itself; main.bicep treats both as not given.
        assert main["parameters"][name]["type"] == "string", name
        assert decorator(main, name, "allowed") is None, name
        uses = [
            v["value"]
            for v in main["variables"].values()
            if f'"string_to_search": "{name}", "string_to_find": "$"' in refs(v["value"])
        ]
        assert uses, f"{name}: a '$...' placeholder is not treated as unset"
    assert evaluate("envName", main, {"environmentName": "${AZURE_ENV_NAME}"}) == "imagesearch"
    assert evaluate("userPrincipalId", main, {"principalId": "${AZURE_PRINCIPAL_ID}"}) == ""
    assert evaluate("clientIp", main, {"clientIpAddress": "${AZURE_CLIENT_IP_ADDRESS}"}) == ""


# --- 10. Connection and rate budgets per function group --------------------------------------------


def function_scale_groups() -> set[str]:
    """Flex Consumption scale groups of function_app.py: http, blob, and every other function alone."""
    groups = set()
    for node in ast.walk(ast.parse((ROOT / "function_app.py").read_text())):
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                call = deco.func if isinstance(deco, ast.Call) else deco
                if isinstance(call, ast.Attribute) and isinstance(call.value, ast.Name) and call.value.id == "app":
                    kind = call.attr
                    if kind == "route" or kind.startswith("http"):
                        groups.add("http")
                    elif kind == "blob_trigger":
                        groups.add("blob")
                    elif kind.endswith("_trigger"):
                        groups.add(f"function:{node.name}")
    return groups


def test_budgets_count_every_function_group_of_the_app(main: dict[str, Any]) -> None:
    groups = function_scale_groups()
    assert groups == {"http", "blob", "function:remove_deleted_image", "function:reconcile_timer"}
    assert evaluate("functionScaleGroups", main) == len(groups)
    assert evaluate("visionScaleGroups", main) == 3  # http (queries), blob (ingest), reconcile_timer
    assert evaluate("visionScaleGroups", main) <= len(groups)


@pytest.mark.parametrize("instances", [1, 2, 3, 5, 10])
def test_connections_fit_the_budget_at_full_scale_out_of_every_group(main: dict[str, Any], instances: int) -> None:
    pool_max = evaluate("databasePoolMax", main, {"maximumInstanceCount": instances})
    budget = param_default(main, "postgresConnectionBudget")
    assert budget < B1MS_USER_CONNECTIONS, "leave room for the administrator, psql and the CLI"
    assert pool_max >= 1
    if budget // (len(function_scale_groups()) * instances) >= 1:
        assert len(function_scale_groups()) * instances * pool_max <= budget
    assert app_settings(main)["DATABASE_POOL_MAX"] == {
        "function": {"type": "string", "parameters": {"value_to_convert": "databasePoolMax"}}
    }


def test_default_budget_numbers(main: dict[str, Any]) -> None:
    assert param_default(main, "maximumInstanceCount") == 2
    assert param_default(main, "postgresConnectionBudget") == 30
    assert evaluate("databasePoolMax", main) == 3  # 4 groups x 2 instances x 3 = 24 of B1ms's 35
    assert evaluate("visionShareMilli", main) == 3333  # 3 groups x 2 instances x 3.333/s = 20/s (S1)
    assert evaluate("visionShareMilli", main, {"visionSkuName": "F0"}) == 55  # 20 calls/minute
    assert app_settings(main)["VISION_MAX_REQUESTS_PER_SECOND"] == "visionShare"
    share = main["variables"]["visionShare"]["value"]
    assert share == "${visionShareMilli / 1000}.${padLeft(string(visionShareMilli % 1000), 3, '0')}"


@pytest.mark.parametrize("instances", [1, 2, 4, 10, 1000])
def test_vision_share_times_every_instance_stays_under_the_rate_limit(main: dict[str, Any], instances: int) -> None:
    milli = evaluate("visionShareMilli", main, {"maximumInstanceCount": instances})
    calls = evaluate("visionScaleGroups", main) * instances * milli / 1000
    assert calls <= VISION_S1_CALLS_PER_SECOND or milli == 1


# --- 11. Python versions --------------------------------------------------------------------------


def test_function_app_runs_python_on_flex_consumption_with_system_identity(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    plan = body(only(templates, "Microsoft.Web/serverfarms"))
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True

    site = body(only(templates, "Microsoft.Web/sites"))
    assert site["kind"] == "functionapp,linux"
    assert site["identity"] == {"type": "SystemAssigned"}
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    assert props["siteConfig"]["ftpsState"] == "Disabled"

    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    function_file = module_template(templates, main, "functionApp")
    # Flex Consumption: Python 3.10-3.12; the project needs 3.11+ (pyproject.toml).
    assert decorator(function_file, "pythonVersion", "allowed") == ["3.11", "3.12"]
    assert decorator(main, "pythonVersion", "allowed") == ["3.11", "3.12"]
    assert module_params(main, "functionApp")["pythonVersion"] == "pythonVersion"
    assert 'requires-python = ">=3.11"' in (ROOT / "pyproject.toml").read_text()
    assert config["deployment"]["storage"]["type"] == "blobContainer"
    assert config["deployment"]["storage"]["authentication"] == {"type": "SystemAssignedIdentity"}
    assert config["scaleAndConcurrency"] == {
        "instanceMemoryMB": "instanceMemoryMB",
        "maximumInstanceCount": "maximumInstanceCount",
    }


# --- app settings ---------------------------------------------------------------------------------


def test_app_settings_are_the_ones_main_bicep_defines(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    loop = body(only(templates, "Microsoft.Web/sites"))["properties"]["siteConfig"]["appSettings"]
    assert loop["loop_type"]["detail"]["object_name"] == "appSettings"
    assert module_params(main, "functionApp")["appSettings"] == "appSettings"


def test_app_settings_cover_every_setting_the_code_reads(main: dict[str, Any]) -> None:
    settings = app_settings(main)
    missing = []
    for name in DEFAULTS:
        if name in DELIBERATELY_UNSET:
            assert name not in settings, f"{name} must not be set in Azure"
        elif name in IDENTITY_CONNECTIONS:
            assert name not in settings, f"{name} should be an identity-based connection, not a connection string"
            if f"{name}__blobServiceUri" not in settings:
                missing.append(f"{name}__blobServiceUri")
        elif name not in settings:
            missing.append(name)
    assert missing == [], f"settings the code reads but infra/main.bicep does not set: {missing}"


def test_app_settings_are_keyless(main: dict[str, Any]) -> None:
    settings = app_settings(main)
    assert settings["DATABASE_AUTH"] == "entra"
    assert settings["BLOB_TRIGGER_SOURCE"] == "EventGrid"
    assert settings["EMBEDDING_PROVIDER"] == "azure-vision"
    # A blob trigger on an identity-based connection also needs the queue service (poison blobs).
    assert "ImagesStorage__queueServiceUri" in settings
    # System-assigned identity: credential=managedidentity without a client ID.
    assert settings["ImagesStorage__credential"] == "managedidentity"
    assert not any(name.endswith("__clientId") for name in settings)
    assert "AzureWebJobsStorage__accountName" in settings and "AzureWebJobsStorage" not in settings
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings
    for name, value in settings.items():
        assert not re.search(r"KEY|PASSWORD|SECRET", name, re.IGNORECASE), name
        assert "listKeys" not in json.dumps(value), f"{name} reads an account key"


# --- conventions: parameters, names, tags, references, outputs -------------------------------------


def test_every_parameter_is_described_and_secrets_are_secure(templates: dict[str, dict[str, Any]]) -> None:
    for path, template in templates.items():
        for name in template.get("parameters", {}):
            assert decorator(template, name, "description"), f"{path}: param {name} has no @description"
            if re.search(r"password|secret|key$", name, re.IGNORECASE):
                kinds = {d["type"] for d in template["parameters"][name]["decorators"]}
                assert "secure" in kinds, f"{path}: param {name} looks secret but is not @secure()"


def test_names_derive_from_a_unique_string_and_abbreviations(main: dict[str, Any]) -> None:
    token = main["variables"]["resourceToken"]["value"]["function"]
    assert token["type"] == "to_lower"
    unique = token["parameters"]["string_to_change"]["function"]
    assert unique["type"] == "unique_string"
    base = unique["parameters"]["base_string"]["function"]
    assert (base["type"], base["property_name"]) == ("resource_group", "id")
    assert unique["parameters"]["extra_string_1"] == "envName"
    abbrs = json.loads((INFRA / "abbreviations.json").read_text())
    used = set(re.findall(r"abbrs\.(\w+)", (INFRA / "main.bicep").read_text()))
    assert used and used <= set(abbrs), f"unknown abbreviations: {used - set(abbrs)}"


# Extension resources take no tags of their own.
UNTAGGED_TYPES = {"Microsoft.Authorization/roleAssignments", "Microsoft.Insights/diagnosticSettings"}


def test_every_resource_is_tagged(templates: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    assert unquote(next(iter(main["variables"]["tags"]["value"]))) == "azd-env-name"
    for path, template in templates.items():
        for name, resource in template.get("resources", {}).items():
            top_level = resource["type"].count("/") == 1
            if top_level and not resource["existing"] and resource["type"] not in UNTAGGED_TYPES:
                assert "tags" in body(resource), f"{path}: {name} has no tags"
    for name, module in main["modules"].items():
        template = templates[module["detail"]["path"]]
        if "tags" in template.get("parameters", {}):
            assert module_params(main, name)["tags"] == "tags", f"module {name} does not get the tags"
    site_tags = body(only(templates, "Microsoft.Web/sites"))["tags"]["function"]
    assert site_tags["type"] == "union"
    assert {unquote(k): v for k, v in site_tags["parameters"]["arg_2"].items()} == {"azd-service-name": "serviceName"}
    assert module_params(main, "functionApp")["serviceName"] == "api"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_each_resource_type_names_its_reference(path: Path, templates: dict[str, dict[str, Any]]) -> None:
    comments = "\n".join(line.strip() for line in path.read_text().splitlines() if line.strip().startswith("//"))
    template = templates[path.relative_to(INFRA).as_posix()]
    for resource in template.get("resources", {}).values():
        type_, api = resource["type"], resource["api_version"]
        assert f"{type_}@{api}" in comments, f"{path.name}: the comments do not name {type_}@{api}"
        if not resource["existing"]:
            namespace, rest = type_.lower().split("/", 1)
            page = f"https://learn.microsoft.com/azure/templates/{namespace}/{api}/{rest}"
            assert page in comments.split(), f"{path.name}: no Microsoft Learn reference {page}"
    for module in template.get("modules", {}).values():
        assert module["detail"]["path"] in comments, f"{path.name}: module {module['detail']['path']} not listed"


def test_outputs_name_what_operators_and_scripts_need(main: dict[str, Any]) -> None:
    outputs = main["outputs"]
    for name in (
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_FUNCTION_APP_PRINCIPAL_ID",
        "SEARCH_URL",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "IMAGES_CONTAINER",
        "DEADLETTER_CONTAINER",
        "VISION_ENDPOINT",
        "VISION_API_VERSION",
        "VISION_MODEL_VERSION",
        "DATABASE_HOST",
        "DATABASE_NAME",
        "DATABASE_ADMIN_NAME",
        "AZURE_RESOURCE_GROUP",
        "EVENTGRID_SYSTEM_TOPIC_NAME",
    ):
        assert name in outputs, name
    assert outputs["SEARCH_URL"]["value"] == "https://${functionApp.outputs.defaultHostName}/api/search"
    for script in (POST_PROVISION, POST_DEPLOY):
        for name in re.findall(r"setting ([A-Z_]+)\)", script.read_text()):
            assert name in outputs, f"{script.name} reads {name}, which main.bicep does not output"


# --- azd and the scripts ---------------------------------------------------------------------------


def test_azure_yaml_runs_the_three_hooks() -> None:
    yaml = pytest.importorskip("yaml")
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert project["infra"]["path"] == "infra"
    assert project["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    expected = {
        "preprovision": "./infra/scripts/pre-provision.sh",
        "postprovision": "./infra/scripts/post-provision.sh",
        "postdeploy": "./infra/scripts/post-deploy.sh",
    }
    assert set(project["hooks"]) == set(expected)
    for hook, script in expected.items():
        for platform in ("posix", "windows"):
            assert project["hooks"][hook][platform]["run"] == script
            assert project["hooks"][hook][platform]["continueOnError"] is False


def test_scripts_are_strict_bash() -> None:
    for script in (PRE_PROVISION, POST_PROVISION, POST_DEPLOY):
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), script.name
        assert "\nset -euo pipefail\n" in text, script.name
    text = POST_DEPLOY.read_text()
    assert 'BLOB_FUNCTION="index_image"' in text
    assert 'DELETE_FUNCTION="remove_deleted_image"' in text


FAKE_AZ = """#!{python}
import json, os, re, sys

args = sys.argv[1:]
with open(os.environ["AZ_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
outputs = json.loads(os.environ.get("FAKE_OUTPUTS", "{{}}"))

def opt(name):
    return args[args.index(name) + 1]

if args[:3] == ["deployment", "group", "list"]:
    print("main")
elif args[:3] == ["deployment", "group", "show"]:
    query = opt("--query")
    if query == "keys(properties.outputs)":
        print("\\n".join(outputs))
    else:
        print(outputs[re.fullmatch(r'properties\\.outputs\\."(.+)"\\.value', query)[1]])
elif args[:3] == ["deployment", "group", "create"]:
    pass
elif args[:2] == ["functionapp", "show"]:
    print("func-test-abc123.westeurope-01.azurewebsites.net")
elif args[:3] == ["functionapp", "keys", "list"]:
    print({{"systemKeys.blobs_extension": "blobs/key==", "systemKeys.eventgrid_extension": "eg/key=="}}[opt("--query")])
elif args[:2] == ["account", "get-access-token"]:
    print("entra-token-for-postgres")
elif args[:2] == ["resource", "show"]:
    size = os.environ.get("FAKE_STORAGE_GB", "")
    if not size:
        sys.exit("ResourceNotFound")
    print(size)
else:
    sys.exit("unexpected az call: " + " ".join(args))
"""

FAKE_AZD = """#!{python}
import json, os, sys
with open(os.environ["AZD_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""

# psql: records each call (arguments, the SQL on stdin, whether a token was passed) and answers a
# step (the '-- step: <name>' line the script puts first) from FAKE_PSQL.
FAKE_PSQL = """#!{python}
import json, os, sys

args = sys.argv[1:]
if args == ["--version"]:
    print("psql (PostgreSQL) " + os.environ.get("FAKE_PSQL_VERSION", "16.4"))
    sys.exit(0)
sql = sys.stdin.read()
step = sql.splitlines()[0].removeprefix("-- step: ").strip()
with open(os.environ["PSQL_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "sql": sql, "step": step, "token": os.environ.get("PGPASSWORD")}}) + "\\n")
answers = json.loads(os.environ.get("FAKE_PSQL", "{{}}"))
if step in answers.get("fail", []):
    sys.exit("psql: error: connection to server failed")
print(answers.get(step, ""))
"""

FAKE_PYTHON = """#!{python}
import json, os, sys

args = sys.argv[1:]
if args[:1] == ["-c"]:
    print("/fake/certifi/cacert.pem")
    sys.exit(0)
keep = ["DATABASE_URL", "DATABASE_AUTH", "DATABASE_POOL_MAX", "SSL_CERT_FILE", "EMBEDDING_PROVIDER",
        "VISION_ENDPOINT", "VISION_API_VERSION", "VISION_MODEL_VERSION", "VISION_KEY", "PGPASSWORD"]
with open(os.environ["PY_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "cwd": os.getcwd(), "env": {{k: os.environ.get(k) for k in keep}}}}) + "\\n")
"""

APP_OID = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
OUTPUTS = {
    "AZURE_FUNCTION_APP_NAME": "func-test",
    "AZURE_FUNCTION_APP_PRINCIPAL_ID": APP_OID,
    "DATABASE_HOST": "psql-test.postgres.database.azure.com",
    "DATABASE_NAME": "imagesearch",
    "DATABASE_ADMIN_NAME": "ada@contoso.com",
    "VISION_ENDPOINT": "https://cv-test.cognitiveservices.azure.com/",
    "VISION_API_VERSION": "2024-02-01",
    "VISION_MODEL_VERSION": "2023-04-15",
    "IMAGES_CONTAINER": "images",
    "DEADLETTER_CONTAINER": "eventgrid-deadletter",
    "AZURE_STORAGE_ACCOUNT_NAME": "sttest",
    "EVENTGRID_SYSTEM_TOPIC_NAME": "evgt-test",
}


def run_script(
    tmp_path: Path, script: Path, args: list[str], env: Mapping[str, str], expect: int = 0
) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not available")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fakes = {"az": FAKE_AZ, "azd": FAKE_AZD, "psql": FAKE_PSQL, "python": FAKE_PYTHON}
    for tool, source in fakes.items():
        (bin_dir / tool).write_text(source.format(python=sys.executable))
        (bin_dir / tool).chmod(stat.S_IRWXU)
    (bin_dir / "curl").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "curl").chmod(stat.S_IRWXU)
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sleep").chmod(stat.S_IRWXU)
    result = subprocess.run(
        [bash, str(script), *args],
        env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(tmp_path),
            "AZ_LOG": str(tmp_path / "az.log"),
            "AZD_LOG": str(tmp_path / "azd.log"),
            "PSQL_LOG": str(tmp_path / "psql.log"),
            "PY_LOG": str(tmp_path / "py.log"),
            "PYTHON": str(bin_dir / "python"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def log(tmp_path: Path, name: str) -> list[Any]:
    path = tmp_path / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# post-deploy: the Event Grid subscriptions


def deployments(calls: list[list[str]]) -> list[dict[str, Any]]:
    found = []
    for call in calls:
        if call[:3] == ["deployment", "group", "create"]:
            params_at = call.index("--parameters")
            options = dict(zip(call[3:params_at:2], call[4:params_at:2], strict=False))
            params = dict(p.split("=", 1) for p in call[params_at + 1 : call.index("--output")])
            found.append({"options": options, "params": params})
    return found


def assert_subscriptions_deployed(calls: list[list[str]], container: str, topic: str) -> None:
    (deployment,) = deployments(calls)
    assert deployment["options"]["--resource-group"] == "rg-test"
    assert deployment["options"]["--name"] == "event-subscriptions"
    assert Path(deployment["options"]["--template-file"]).resolve() == INFRA / "subscriptions.bicep"
    assert deployment["params"] == {
        "appName": "func-test",
        "systemTopicName": topic,
        "storageAccountName": "sttest",
        "imagesContainerName": container,
        "deadLetterContainerName": "eventgrid-deadletter",
        "blobFunctionName": "index_image",
        "deleteFunctionName": "remove_deleted_image",
    }
    # The keys stay out of the command line: the template reads them with listKeys.
    assert not any("key==" in arg for call in calls for arg in call)
    waited = [call for call in calls if call[:3] == ["functionapp", "keys", "list"]]
    assert {call[call.index("--query") + 1] for call in waited} == {
        "systemKeys.blobs_extension",
        "systemKeys.eventgrid_extension",
    }


def test_post_deploy_deploys_the_subscriptions_from_azd_environment(tmp_path: Path) -> None:
    run_script(tmp_path, POST_DEPLOY, [], env={"AZURE_RESOURCE_GROUP": "rg-test", **OUTPUTS})
    calls = log(tmp_path, "az.log")
    assert not any(call[:3] == ["deployment", "group", "show"] for call in calls), "azd mode reads no outputs"
    assert_subscriptions_deployed(calls, "images", "evgt-test")


def test_post_deploy_reads_deployment_outputs_standalone(tmp_path: Path) -> None:
    # Output names are matched case-insensitively: ARM may return them in another case.
    outputs = {k.lower() if k.startswith("AZURE_F") else k: v for k, v in OUTPUTS.items()}
    outputs["IMAGES_CONTAINER"] = "photos"
    outputs["EventGrid_System_Topic_Name"] = outputs.pop("EVENTGRID_SYSTEM_TOPIC_NAME")
    run_script(tmp_path, POST_DEPLOY, ["-g", "rg-test"], env={"FAKE_OUTPUTS": json.dumps(outputs)})
    assert_subscriptions_deployed(log(tmp_path, "az.log"), "photos", "evgt-test")


@pytest.mark.parametrize("script", [POST_DEPLOY, POST_PROVISION], ids=lambda p: p.name)
def test_scripts_without_resource_group_fail_with_usage(tmp_path: Path, script: Path) -> None:
    result = run_script(tmp_path, script, [], env={}, expect=2)
    assert "resource group" in result.stderr


# post-provision: the database, as the administrator


def psql_steps(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {call["step"]: call for call in log(tmp_path, "psql.log")}


def test_post_provision_creates_the_app_role_database_and_runs_migrate_and_grant(tmp_path: Path) -> None:
    answers = {"role-state": "role|0\nadmin|0\nprincipal|ada-admin|user|1111|tenant|0|1", "database-exists": "0"}
    run_script(
        tmp_path,
        POST_PROVISION,
        [],
        env={"AZURE_RESOURCE_GROUP": "rg-test", "FAKE_PSQL": json.dumps(answers), **OUTPUTS},
    )
    steps = psql_steps(tmp_path)
    assert list(steps) == ["role-state", "create-role", "database-exists", "create-database"]
    create = steps["create-role"]
    assert "pgaadauth_create_principal_with_oid(:'app_role', :'app_oid', 'service', false, false)" in create["sql"], (
        "the app's role is an ordinary (non-admin) role mapped to its managed identity"
    )
    for call in steps.values():
        conninfo = call["args"][0]
        assert "dbname=postgres" in conninfo and "user='ada@contoso.com'" in conninfo
        assert "sslmode=verify-full" in conninfo and "sslrootcert=system" in conninfo  # psql 16
        assert call["token"] == "entra-token-for-postgres"
        assert "app_role=func-test" in call["args"] and f"app_oid={APP_OID}" in call["args"]
        assert "ON_ERROR_STOP=1" in call["args"]
    assert 'CREATE DATABASE :"db_name";' in steps["create-database"]["sql"]

    cli = log(tmp_path, "py.log")
    assert [c["args"] for c in cli] == [
        ["-m", "shared.cli", "migrate"],
        ["-m", "shared.cli", "grant-app-role", "func-test"],
    ]
    for call in cli:
        env = call["env"]
        assert env["DATABASE_URL"] == (
            "postgresql://ada%40contoso.com@psql-test.postgres.database.azure.com:5432/imagesearch"
            "?sslmode=verify-full&sslrootcert=system"
        )
        assert env["DATABASE_AUTH"] == "entra"
        assert env["DATABASE_POOL_MAX"] == "2"
        assert env["SSL_CERT_FILE"] == "/fake/certifi/cacert.pem"  # psycopg-binary's OpenSSL needs it
        assert env["VISION_ENDPOINT"] == OUTPUTS["VISION_ENDPOINT"]
        assert env["VISION_MODEL_VERSION"] == "2023-04-15"
        assert env["EMBEDDING_PROVIDER"] == "azure-vision"
        assert env["VISION_KEY"] is None and env["PGPASSWORD"] is None
        assert Path(call["cwd"]).resolve() == ROOT
    az = log(tmp_path, "az.log")
    assert ["account", "get-access-token", "--resource-type", "oss-rdbms", "--query", "accessToken", "-o", "tsv"] in az
    assert not any(c[:3] == ["postgres", "flexible-server", "firewall-rule"] for c in az), "it opens nothing"


def test_post_provision_is_idempotent(tmp_path: Path) -> None:
    answers = {
        "role-state": f"role|1\nadmin|0\nprincipal|func-test|service|{APP_OID.upper()}|tenant|0|0",
        "database-exists": "1",
    }
    env = {"AZURE_RESOURCE_GROUP": "rg-test", "FAKE_PSQL": json.dumps(answers), **OUTPUTS}
    run_script(tmp_path, POST_PROVISION, [], env=env)
    assert list(psql_steps(tmp_path)) == ["role-state", "database-exists"]
    assert len(log(tmp_path, "py.log")) == 2


def test_post_provision_remaps_the_role_of_a_recreated_app(tmp_path: Path) -> None:
    answers = {
        "role-state": "role|1\nadmin|0\nprincipal|func-test|service|99999999-0000-0000-0000-000000000000|t|0|0",
        "database-exists": "1",
    }
    run_script(
        tmp_path,
        POST_PROVISION,
        [],
        env={"AZURE_RESOURCE_GROUP": "rg-test", "FAKE_PSQL": json.dumps(answers), **OUTPUTS},
    )
    steps = psql_steps(tmp_path)
    assert list(steps) == ["role-state", "relabel-role", "database-exists"]
    assert """SECURITY LABEL FOR "pgaadauth" ON ROLE :"app_role" IS :'label';""" in steps["relabel-role"]["sql"]
    assert f"label=aadauth,oid={APP_OID},type=service" in steps["relabel-role"]["args"]


def test_post_provision_refuses_an_app_role_that_is_an_administrator(tmp_path: Path) -> None:
    answers = {"role-state": f"role|1\nadmin|1\nprincipal|func-test|service|{APP_OID}|t|0|1"}
    result = run_script(
        tmp_path,
        POST_PROVISION,
        [],
        env={"AZURE_RESOURCE_GROUP": "rg-test", "FAKE_PSQL": json.dumps(answers), **OUTPUTS},
        expect=1,
    )
    assert "azure_pg_admin" in result.stderr and "docs/deploy.md" in result.stderr
    assert list(psql_steps(tmp_path)) == ["role-state"]
    assert log(tmp_path, "py.log") == [], "no migration runs while the app is still an administrator"


def test_post_provision_on_an_elastic_cluster_uses_database_postgres(tmp_path: Path) -> None:
    answers = {"role-state": "role|0\nadmin|0"}
    outputs = {**OUTPUTS, "DATABASE_NAME": "postgres", "DATABASE_ADMIN_NAME": "db admins"}
    env = {"AZURE_RESOURCE_GROUP": "rg-test", "FAKE_PSQL": json.dumps(answers), **outputs}
    run_script(tmp_path, POST_PROVISION, [], env=env)
    assert list(psql_steps(tmp_path)) == ["role-state", "create-role"]
    (migrate, _grant) = log(tmp_path, "py.log")
    assert migrate["env"]["DATABASE_URL"].startswith(
        "postgresql://db%20admins@psql-test.postgres.database.azure.com:5432/postgres?"
    )


def test_post_provision_falls_back_to_a_ca_file_for_psql_before_16(tmp_path: Path) -> None:
    answers = {"role-state": "role|0\nadmin|0", "database-exists": "1"}
    env = {
        "AZURE_RESOURCE_GROUP": "rg-test",
        "FAKE_PSQL": json.dumps(answers),
        "FAKE_PSQL_VERSION": "15.8",
        "PGSSLROOTCERT": "/etc/custom/roots.pem",
        **OUTPUTS,
    }
    run_script(tmp_path, POST_PROVISION, [], env=env)
    for call in psql_steps(tmp_path).values():
        assert "sslmode=verify-full sslrootcert=/etc/custom/roots.pem" in call["args"][0]


def test_post_provision_explains_an_unreachable_server(tmp_path: Path) -> None:
    answers = {"fail": ["role-state"]}
    result = run_script(
        tmp_path,
        POST_PROVISION,
        [],
        env={"AZURE_RESOURCE_GROUP": "rg-test", "FAKE_PSQL": json.dumps(answers), **OUTPUTS},
        expect=1,
    )
    assert "clientIpAddress" in result.stderr and "az login" in result.stderr


def test_post_provision_rejects_values_that_would_reach_sql_unchecked(tmp_path: Path) -> None:
    outputs = {**OUTPUTS, "AZURE_FUNCTION_APP_NAME": "func'; DROP ROLE x; --"}
    result = run_script(tmp_path, POST_PROVISION, [], env={"AZURE_RESOURCE_GROUP": "rg-test", **outputs}, expect=1)
    assert "unexpected Function App name" in result.stderr
    assert log(tmp_path, "psql.log") == []


def test_post_provision_reads_deployment_outputs_standalone(tmp_path: Path) -> None:
    answers = {"role-state": "role|0\nadmin|0", "database-exists": "1"}
    run_script(
        tmp_path,
        POST_PROVISION,
        ["-g", "rg-test"],
        env={"FAKE_PSQL": json.dumps(answers), "FAKE_OUTPUTS": json.dumps(OUTPUTS)},
    )
    assert "create-role" in psql_steps(tmp_path)


# pre-provision: the grown disk


def test_pre_provision_records_the_current_disk_size(tmp_path: Path) -> None:
    env = {"AZURE_RESOURCE_GROUP": "rg-test", "DATABASE_HOST": "psql-test.postgres.database.azure.com"}
    run_script(tmp_path, PRE_PROVISION, [], env={**env, "FAKE_STORAGE_GB": "64"})
    (show,) = log(tmp_path, "az.log")
    assert show[:2] == ["resource", "show"]
    assert show[show.index("-n") + 1] == "psql-test"
    assert show[show.index("--resource-type") + 1] == "Microsoft.DBforPostgreSQL/flexibleServers"
    assert show[show.index("--query") + 1] == "properties.storage.storageSizeGB"
    assert log(tmp_path, "azd.log") == [["env", "set", "AZURE_POSTGRES_CURRENT_STORAGE_GB", "64"]]


def test_pre_provision_does_nothing_before_the_first_provision(tmp_path: Path) -> None:
    run_script(tmp_path, PRE_PROVISION, [], env={"AZURE_RESOURCE_GROUP": "rg-test"})
    assert log(tmp_path, "az.log") == [] and log(tmp_path, "azd.log") == []
    env = {"AZURE_RESOURCE_GROUP": "rg-test", "DATABASE_HOST": "psql-gone.postgres.database.azure.com"}
    result = run_script(tmp_path, PRE_PROVISION, [], env=env)  # server deleted: warn, go on
    assert "could not read" in result.stderr
    assert log(tmp_path, "azd.log") == []


# --- the deployment guide covers it all --------------------------------------------------------------


def test_deploy_docs_cover_paths_admin_networking_budgets_and_dead_letters() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for needle in (
        "azd up",
        "az deployment group create",
        "func azure functionapp publish",
        "infra/scripts/post-provision.sh",
        "infra/scripts/post-deploy.sh",
        "infra/subscriptions.bicep",
        "pgaadauth_create_principal_with_oid",
        "grant-app-role",
        "python -m shared.cli migrate",
        "AZURE_PRINCIPAL_TYPE",
        "AZURE_VISION_LOCATION",
        "AZURE_CLIENT_IP_ADDRESS",
        "AZURE_POSTGRES_ADMIN_OBJECT_ID",
        "networkMode",
        "sslmode=verify-full",
        "PgBouncer",
        "DATABASE_POOL_MAX",
        "VISION_MAX_REQUESTS_PER_SECOND",
        "eventgrid-deadletter",
        "reconcile",
        "azd down",
        "az group delete",
        "postgresElasticCluster",
        "Upgrading from the app-as-administrator layout",
    ):
        assert needle in text, needle
