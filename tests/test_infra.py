"""The Bicep in infra/ parses, passes checkov, and provisions what the product needs.

Azure and the Bicep CLI are not available here, so the templates are parsed with pycep (the parser
checkov uses) and the assertions read the parsed structure: property values, not string presence.
The post-deploy script runs against a fake `az` that records its calls.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pycep import BicepParser

from shared.settings import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
POST_DEPLOY = INFRA / "scripts" / "post-deploy.sh"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

VISION_REGIONS = {
    "eastus", "westus", "westus2", "francecentral", "northeurope", "westeurope", "swedencentral",
    "switzerlandnorth", "australiaeast", "southeastasia", "koreacentral", "japaneast",
}  # fmt: skip

ROLE_STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ROLE_STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
ROLE_STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
ROLE_STORAGE_BLOB_DELEGATOR = "db58b8e5-c6ad-4a2a-8342-4190687cbf4a"
ROLE_COGNITIVE_SERVICES_USER = "a97b65f3-24c7-4388-baec-2e87135dc908"
ROLE_MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

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


# --- helpers --------------------------------------------------------------------------------------


def unquote(key: str) -> str:
    """pycep keeps the quotes of quoted object keys ('azd-env-name')."""
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == "'" else key


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource's object, whether or not it is deployed under an `if (...)` condition."""
    config: dict[str, Any] = resource["config"]
    if set(config) == {"condition", "config"}:
        return config["config"]  # type: ignore[no-any-return]
    return config


def condition(resource: dict[str, Any]) -> Any:
    config = resource["config"]
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
    return main["modules"][module_name]["config"]["params"]  # type: ignore[no-any-return]


def module_file(main: dict[str, Any], module_name: str) -> str:
    return main["modules"][module_name]["detail"]["path"]  # type: ignore[no-any-return]


def app_settings(main: dict[str, Any]) -> dict[str, Any]:
    return main["variables"]["appSettings"]["value"]  # type: ignore[no-any-return]


# --- the templates parse and pass checkov ---------------------------------------------------------


def test_infra_has_the_expected_files() -> None:
    names = {path.relative_to(INFRA).as_posix() for path in BICEP_FILES}
    assert "main.bicep" in names
    assert (INFRA / "main.parameters.json").is_file()
    assert (INFRA / "abbreviations.json").is_file()
    assert POST_DEPLOY.is_file()


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


# --- storage ---------------------------------------------------------------------------------------


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
    }
    for container in containers:
        assert body(container)["properties"]["publicAccess"] == "None"
    storage = module_params(main, "storage")
    assert storage["imagesContainerName"] == "imagesContainerName"
    assert param_default(main, "imagesContainerName") == DEFAULTS["IMAGES_CONTAINER"]
    assert storage["thumbnailsContainerName"] == "thumbnailsContainerName"
    assert param_default(main, "thumbnailsContainerName") == DEFAULTS["THUMBNAILS_CONTAINER"]


# --- Azure AI Vision -------------------------------------------------------------------------------


def test_vision_account_is_keyless_with_a_custom_subdomain(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    vision_file = templates[module_file(main, "vision")]
    account = body(only(templates, "Microsoft.CognitiveServices/accounts"))
    assert account["kind"] == "ComputerVision"
    assert account["properties"]["customSubDomainName"] == "name"  # the unique account name
    assert account["properties"]["disableLocalAuth"] == "disableLocalAuth"
    assert param_default(vision_file, "disableLocalAuth") is True
    assert module_params(main, "vision")["disableLocalAuth"] == "visionDisableLocalAuth"
    assert param_default(main, "visionDisableLocalAuth") is True
    assert param_default(main, "visionSkuName") == "S1"


def test_vision_location_is_restricted_to_multimodal_embedding_regions(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    assert set(decorator(main, "visionLocation", "allowed")) == VISION_REGIONS
    assert set(decorator(templates[module_file(main, "vision")], "location", "allowed")) == VISION_REGIONS
    assert module_params(main, "vision")["location"] == "visionLocation"


# --- PostgreSQL ------------------------------------------------------------------------------------


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


def test_postgres_defaults_are_small_and_burstable(templates: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    assert param_default(main, "postgresSkuName") == "Standard_B1ms"
    assert param_default(main, "postgresSkuTier") == "Burstable"
    assert param_default(main, "postgresElasticCluster") is False
    assert module_params(main, "postgres")["databaseName"] == "imagesearch"


def test_vector_extension_is_allow_listed(templates: dict[str, dict[str, Any]]) -> None:
    configs = resources_of(templates, "Microsoft.DBforPostgreSQL/flexibleServers/configurations")
    extensions = [body(c) for c in configs if body(c)["name"] == "azure.extensions"]
    assert len(extensions) == 1
    assert "VECTOR" in extensions[0]["properties"]["value"].upper().split(",")
    assert extensions[0]["properties"]["source"] == "user-override"


def test_firewall_allows_azure_services(templates: dict[str, dict[str, Any]]) -> None:
    rules = [
        body(r)["properties"]
        for r in resources_of(templates, "Microsoft.DBforPostgreSQL/flexibleServers/firewallRules")
    ]
    assert {"startIpAddress": "0.0.0.0", "endIpAddress": "0.0.0.0"} in rules


def test_function_app_identity_is_the_postgres_entra_admin(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    admin = body(only(templates, "Microsoft.DBforPostgreSQL/flexibleServers/administrators"))
    assert admin["name"] == "principalId"
    assert admin["properties"]["principalName"] == "principalName"
    assert admin["properties"]["principalType"] == "principalType"
    params = module_params(main, "postgresAdmin")
    assert params["principalType"] == "ServicePrincipal"
    assert json.dumps(params["principalId"]) == json.dumps(module_params(main, "roleAssignments")["appPrincipalId"])
    assert "functionApp" in json.dumps(params["principalId"]) and "principalId" in json.dumps(params["principalId"])
    # The role name in DATABASE_URL is the app name, which is the principal name of its identity.
    assert "functionApp" in json.dumps(params["principalName"])
    assert app_settings(main)["DATABASE_URL"].startswith("postgresql://${functionAppName}@")


def test_elastic_cluster_switch(templates: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    postgres = templates[module_file(main, "postgres")]
    server = body(only(templates, "Microsoft.DBforPostgreSQL/flexibleServers"))
    cluster = server["properties"]["cluster"]["operator"]
    assert cluster["type"] == "conditional"
    assert cluster["operands"]["condition"] == "elasticCluster"
    assert cluster["operands"]["true_value"] == {"clusterSize": "clusterSize"}
    assert cluster["operands"]["false_value"] is None
    version = postgres["variables"]["effectiveVersion"]["value"]["operator"]["operands"]
    assert (version["condition"], version["true_value"]) == ("elasticCluster", "17")
    database = postgres["variables"]["effectiveDatabaseName"]["value"]["operator"]["operands"]
    assert (database["condition"], database["true_value"]) == ("elasticCluster", "postgres")
    # No separate database on a cluster: it has exactly one, postgres.
    db = next(r for r in postgres["resources"].values() if r["type"].endswith("/databases"))
    assert json.dumps(condition(db)) == json.dumps(
        {"operator": {"type": "not", "operands": {"bool_value": "elasticCluster"}}}
    )
    params = module_params(main, "postgres")
    assert params["elasticCluster"] == "postgresElasticCluster"
    assert params["clusterSize"] == "postgresClusterSize"


# --- Function App ----------------------------------------------------------------------------------


def test_function_app_runs_python_311_on_flex_consumption_with_system_identity(
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
    function_file = templates[module_file(main, "functionApp")]
    assert param_default(function_file, "pythonVersion") == "3.11"
    assert module_params(main, "functionApp")["pythonVersion"] == "3.11"
    assert config["deployment"]["storage"]["type"] == "blobContainer"
    assert config["deployment"]["storage"]["authentication"] == {"type": "SystemAssignedIdentity"}
    assert config["scaleAndConcurrency"] == {
        "instanceMemoryMB": "instanceMemoryMB",
        "maximumInstanceCount": "maximumInstanceCount",
    }


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

    url = settings["DATABASE_URL"]
    match = re.fullmatch(r"postgresql://(?P<user>[^@/]+)@(?P<host>[^/]+)/(?P<db>[^?]+)\?(?P<query>.+)", url)
    assert match, url
    assert ":" not in match["user"], "DATABASE_URL must not carry a password"
    assert "sslmode=require" in match["query"].split("&")
    for name, value in settings.items():
        assert not re.search(r"KEY|PASSWORD|SECRET", name, re.IGNORECASE), name
        assert "listKeys" not in json.dumps(value), f"{name} reads an account key"


# --- role assignments ------------------------------------------------------------------------------


def role_assignments(templates: dict[str, dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """(role definition GUID, principalId, deploy condition) of every role assignment."""
    found = []
    for resource in resources_of(templates, "Microsoft.Authorization/roleAssignments"):
        role = body(resource)["properties"]["roleDefinitionId"]["function"]
        assert role["type"] == "subscription_resource_id"
        assert role["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        found.append(
            (role["parameters"]["resource_name_1"], body(resource)["properties"]["principalId"], condition(resource))
        )
    return found


def test_app_identity_gets_the_roles_it_needs(templates: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    app_roles = {
        role for role, principal, cond in role_assignments(templates) if principal == "appPrincipalId" and cond is None
    }
    assert app_roles >= {
        ROLE_STORAGE_BLOB_DATA_OWNER,
        ROLE_STORAGE_QUEUE_DATA_CONTRIBUTOR,
        ROLE_STORAGE_TABLE_DATA_CONTRIBUTOR,
        ROLE_STORAGE_BLOB_DELEGATOR,
        ROLE_COGNITIVE_SERVICES_USER,
        ROLE_MONITORING_METRICS_PUBLISHER,
    }
    assert "principalId" in json.dumps(module_params(main, "roleAssignments")["appPrincipalId"])


def test_deploying_user_optionally_gets_upload_and_vision_roles(
    templates: dict[str, dict[str, Any]], main: dict[str, Any]
) -> None:
    user = [(role, cond) for role, principal, cond in role_assignments(templates) if principal == "userPrincipalId"]
    assert {role for role, _ in user} == {ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR, ROLE_COGNITIVE_SERVICES_USER}
    for _, cond in user:  # only when a principal ID was given
        assert "empty" in json.dumps(cond) and "userPrincipalId" in json.dumps(cond)
    assert module_params(main, "roleAssignments")["userPrincipalId"] == "userPrincipalId"
    assert param_default(main, "principalId") == ""


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


def test_every_resource_is_tagged(templates: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    assert unquote(next(iter(main["variables"]["tags"]["value"]))) == "azd-env-name"
    for path, template in templates.items():
        for name, resource in template.get("resources", {}).items():
            top_level = resource["type"].count("/") == 1
            if top_level and not resource["existing"] and resource["type"] != "Microsoft.Authorization/roleAssignments":
                assert "tags" in body(resource), f"{path}: {name} has no tags"
    for name, module in main["modules"].items():
        template = templates[module["detail"]["path"]]
        if "tags" in template.get("parameters", {}):
            assert module["config"]["params"]["tags"] == "tags", f"module {name} does not get the tags"
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


def test_outputs_name_what_operators_need(main: dict[str, Any]) -> None:
    outputs = main["outputs"]
    for name in (
        "AZURE_FUNCTION_APP_NAME",
        "SEARCH_URL",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "IMAGES_CONTAINER",
        "VISION_ENDPOINT",
        "DATABASE_HOST",
        "DATABASE_NAME",
        "AZURE_RESOURCE_GROUP",
        "EVENTGRID_SYSTEM_TOPIC_NAME",
    ):
        assert name in outputs, name
    assert outputs["SEARCH_URL"]["value"] == "https://${functionApp.outputs.defaultHostName}/api/search"


def test_parameters_file_only_sets_declared_parameters(main: dict[str, Any]) -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(parameters) <= set(main["parameters"])
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    # Plain `az deployment` passes the placeholders verbatim; main.bicep treats them as unset.
    env = main["variables"]["envName"]["value"]["operator"]["operands"]
    assert env["condition"]["function"]["parameters"] == {"string_to_search": "environmentName", "string_to_find": "$"}
    user = main["variables"]["userPrincipalId"]["value"]["operator"]["operands"]
    assert user["condition"]["function"]["parameters"] == {"string_to_search": "principalId", "string_to_find": "$"}
    assert user["true_value"] == ""


# --- azd and the post-deploy step ------------------------------------------------------------------


def test_azure_yaml_deploys_the_api_and_runs_the_post_deploy_hook() -> None:
    yaml = pytest.importorskip("yaml")
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert project["infra"]["path"] == "infra"
    assert project["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    hooks = project["hooks"]["postdeploy"]
    for platform in ("posix", "windows"):
        assert hooks[platform]["run"] == "./infra/scripts/post-deploy.sh"
    assert os.access(POST_DEPLOY, os.X_OK), "post-deploy.sh must be executable (azd runs it directly)"


def test_post_deploy_script_is_strict_and_names_the_functions() -> None:
    text = POST_DEPLOY.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert 'BLOB_FUNCTION="index_image"' in text
    assert 'DELETE_FUNCTION="remove_deleted_image"' in text
    assert "Host.Functions.$BLOB_FUNCTION" in text


FAKE_AZ = """#!{python}
import json, os, re, sys

args = sys.argv[1:]
with open(os.environ["AZ_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
outputs = json.loads(os.environ["FAKE_OUTPUTS"])

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
elif args[:2] == ["functionapp", "show"]:
    print("func-test-abc123.westeurope-01.azurewebsites.net")
elif args[:3] == ["functionapp", "keys", "list"]:
    print({{"systemKeys.blobs_extension": "blobs/key==", "systemKeys.eventgrid_extension": "eg/key=="}}[opt("--query")])
elif args[:4] == ["eventgrid", "system-topic", "event-subscription", "create"]:
    pass
else:
    sys.exit("unexpected az call: " + " ".join(args))
"""


def run_post_deploy(tmp_path: Path, args: list[str], env: dict[str, str], outputs: dict[str, str]) -> list[list[str]]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not available")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text(FAKE_AZ.format(python=sys.executable))
    (bin_dir / "curl").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("az", "curl"):
        (bin_dir / tool).chmod(stat.S_IRWXU)
    log = tmp_path / "az.log"
    result = subprocess.run(
        [bash, str(POST_DEPLOY), *args],
        env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(tmp_path),
            "AZ_LOG": str(log),
            "FAKE_OUTPUTS": json.dumps(outputs),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def subscriptions(calls: list[list[str]]) -> dict[str, dict[str, str]]:
    created = {}
    for call in calls:
        if call[:4] == ["eventgrid", "system-topic", "event-subscription", "create"]:
            options = dict(zip(call[4::2], call[5::2], strict=False))
            created[options["--name"]] = options
    return created


def assert_both_subscriptions(created: dict[str, dict[str, str]], container: str, topic: str) -> None:
    host = "https://func-test-abc123.westeurope-01.azurewebsites.net"
    blob, delete = created[f"{container}-blob-created"], created[f"{container}-blob-deleted"]
    assert (
        blob["--endpoint"] == f"{host}/runtime/webhooks/blobs?functionName=Host.Functions.index_image&code=blobs/key=="
    )
    assert blob["--included-event-types"] == "Microsoft.Storage.BlobCreated"
    assert delete["--endpoint"] == f"{host}/runtime/webhooks/eventgrid?functionName=remove_deleted_image&code=eg/key=="
    assert delete["--included-event-types"] == "Microsoft.Storage.BlobDeleted"
    for options in (blob, delete):
        assert options["--subject-begins-with"] == f"/blobServices/default/containers/{container}/"
        assert options["--system-topic-name"] == topic
        assert options["--endpoint-type"] == "webhook"
        assert options["--resource-group"] == "rg-test"
    assert len(created) == 2


def test_post_deploy_subscribes_both_triggers_from_azd_environment(tmp_path: Path) -> None:
    calls = run_post_deploy(
        tmp_path,
        [],
        env={
            "AZURE_RESOURCE_GROUP": "rg-test",
            "AZURE_FUNCTION_APP_NAME": "func-test",
            "IMAGES_CONTAINER": "images",
            "EVENTGRID_SYSTEM_TOPIC_NAME": "evgt-test",
        },
        outputs={},
    )
    assert not any(call[:2] == ["deployment", "group"] for call in calls), "azd mode must not query deployments"
    assert_both_subscriptions(subscriptions(calls), "images", "evgt-test")


def test_post_deploy_reads_deployment_outputs_standalone(tmp_path: Path) -> None:
    # Output names are matched case-insensitively: ARM may return them in another case.
    outputs = {
        "azure_function_app_name": "func-test",
        "IMAGES_CONTAINER": "photos",
        "EventGrid_System_Topic_Name": "evgt-standalone",
    }
    calls = run_post_deploy(tmp_path, ["-g", "rg-test"], env={}, outputs=outputs)
    assert_both_subscriptions(subscriptions(calls), "photos", "evgt-standalone")


def test_post_deploy_without_resource_group_fails_with_usage(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not available")
    result = subprocess.run(
        [bash, str(POST_DEPLOY)],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "resource group" in result.stderr


def test_deploy_docs_cover_both_paths() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for needle in (
        "azd up",
        "az deployment group create",
        "func azure functionapp publish",
        "infra/scripts/post-deploy.sh",
        "az functionapp keys list",
        "azd down",
        "az group delete",
        "postgresElasticCluster",
    ):
        assert needle in text, needle
