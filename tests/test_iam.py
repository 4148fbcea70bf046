"""The IAM policies of matricula_backup/iam.py against the S3 calls in the code.

The S3 operations are not listed by hand here: they are read from the
package's source with ``ast`` (every ``<client>.<boto3 method>(...)``, every
``get_paginator("<method>")``, the CRT's ``S3RequestType.PUT_OBJECT``),
together with the keyword arguments each call passes (a ``VersionId`` or an
``ObjectLockMode`` changes the IAM action it needs; ``**kwargs`` counts as
every such argument). A call graph over the package's functions (names,
``module.function`` and methods of classes a module mentions) gives the
operations each CLI command can reach; each must be allowed by the role
``iam.COMMAND_ROLES`` documents for that command, and the role must grant
nothing the code does not need.
"""

from __future__ import annotations

import ast
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from matricula_backup import iam
from tests.conftest import Setup

PACKAGE = Path(iam.__file__).resolve().parent
# A CRT request's operation: by its type, or (DEFAULT) by its operation_name argument.
CRT_REQUESTS = {"PUT_OBJECT": "PutObject", "GET_OBJECT": "GetObject", "DEFAULT": None}
ANY_PARAMETER = "**"
PROTOCOL_METHODS = {"__init__", "__post_init__", "__call__", "__enter__", "__exit__"}


def _api_methods() -> dict[str, str]:
    """boto3 method name -> API operation name, for S3 and STS (no request is made)."""
    mapping: dict[str, str] = {}
    for service in ("s3", "sts"):
        client = boto3.client(
            service,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        mapping.update(client.meta.method_to_api_mapping)
    return mapping


API = _api_methods()


@dataclass
class Function:
    module: str
    name: str  # qualified: "upload", "FastPut.put"
    node: ast.AST
    calls: set[tuple[str, frozenset[str]]] = field(default_factory=set)  # S3 ops
    refs: set[tuple[str, str]] = field(default_factory=set)  # package functions


class Package:
    """Functions of the package, their S3 calls and what they refer to."""

    def __init__(self) -> None:
        self.functions: dict[tuple[str, str], Function] = {}
        self.classes: dict[str, list[tuple[str, str]]] = defaultdict(list)  # name -> methods
        self.field_types: dict[str, set[str]] = defaultdict(set)  # class -> names in annotations
        trees = {}
        for path in sorted(PACKAGE.rglob("*.py")):
            module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
            trees[module] = ast.parse(path.read_text(), str(path))
            for node in trees[module].body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self._add(module, node.name, node)
                elif isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, ast.AnnAssign):
                            self.field_types[node.name] |= {
                                n.id for n in ast.walk(item.annotation) if isinstance(n, ast.Name)
                            }
                        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                            key = self._add(module, f"{node.name}.{item.name}", item)
                            self.classes[node.name].append(key)
        for module, tree in trees.items():
            self._link(module, tree)

    def _add(self, module: str, name: str, node: ast.AST) -> tuple[str, str]:
        self.functions[(module, name)] = Function(module, name, node)
        return (module, name)

    def _link(self, module: str, tree: ast.Module) -> None:
        modules: dict[str, str] = {}  # local name -> package module
        imported: dict[str, tuple[str, str]] = {}  # local name -> package function
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "matricula_backup"
            ):
                for alias in node.names:
                    local = alias.asname or alias.name
                    as_module = f"{node.module}.{alias.name}"
                    if any(key[0] == as_module for key in self.functions):
                        modules[local] = as_module
                    else:
                        imported[local] = (node.module or "", alias.name)
        mentioned = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | set(imported)
        # A class mentioned brings the classes of its fields: `store.fast_put.put(...)` in a
        # module that names Store reaches FastPut.put (Store and FastPut are in s3/client.py
        # and s3/crt.py, the module that calls it names neither FastPut).
        mentioned |= {t for name in list(mentioned) for t in self.field_types.get(name, ())}
        methods: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for class_name, keys in self.classes.items():
            if class_name in mentioned:
                for key in keys:
                    methods[key[1].split(".", 1)[1]].append(key)
        for function in [f for f in self.functions.values() if f.module == module]:
            for node in ast.walk(function.node):
                self._visit(function, node, modules, imported, methods)

    def _visit(
        self,
        function: Function,
        node: ast.AST,
        modules: dict[str, str],
        imported: dict[str, tuple[str, str]],
        methods: dict[str, list[tuple[str, str]]],
    ) -> None:
        module = function.module
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            parameters = frozenset(
                keyword.arg if keyword.arg is not None else ANY_PARAMETER
                for keyword in node.keywords
            )
            for keyword in node.keywords:
                if keyword.arg == "operation_name":  # a CRT request of type DEFAULT
                    assert isinstance(keyword.value, ast.Constant), ast.unparse(node)
                    function.calls.add((str(keyword.value.value), frozenset({ANY_PARAMETER})))
            if method in API:
                function.calls.add((API[method], parameters))
            elif method == "get_paginator" and node.args:
                first = node.args[0]
                assert isinstance(first, ast.Constant), ast.unparse(node)
                function.calls.add((API[first.value], frozenset()))
            for key in methods.get(method, []):
                function.refs.add(key)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in modules:
                function.refs.add((modules[node.value.id], node.attr))
            if isinstance(node.value, ast.Attribute) and node.value.attr == "S3RequestType":
                operation = CRT_REQUESTS[node.attr]
                if operation is not None:
                    function.calls.add((operation, frozenset({ANY_PARAMETER})))
            for key in methods.get(node.attr, []):
                function.refs.add(key)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if (module, node.id) in self.functions:
                function.refs.add((module, node.id))
            elif node.id in imported:
                function.refs.add(imported[node.id])
            for key in self.classes.get(node.id, []):  # a class used: built, entered, called
                if key[1].split(".", 1)[1] in PROTOCOL_METHODS:
                    function.refs.add(key)

    def reachable_operations(self, start: tuple[str, str]) -> set[tuple[str, frozenset[str]]]:
        seen = {start}
        todo = deque([start])
        operations: set[tuple[str, frozenset[str]]] = set()
        while todo:
            function = self.functions[todo.popleft()]
            operations |= function.calls
            for ref in function.refs:
                if ref in self.functions and ref not in seen:
                    seen.add(ref)
                    todo.append(ref)
        return operations


def _needed(operation: str, parameters: frozenset[str]) -> set[str]:
    if ANY_PARAMETER not in parameters:
        return iam.actions_of(operation, set(parameters))
    # Arguments unknown to the source: every action any of them could need.
    every = {p for (op, p) in iam.PARAMETER_ACTIONS if op == operation}
    return iam.actions_of(operation, set()) | iam.actions_of(operation, every)


def _commands(package: Package) -> dict[str, tuple[str, str]]:
    """CLI command name -> its function, from the typer decorators of cli.py."""
    commands = {}
    for key, function in package.functions.items():
        if key[0] != "matricula_backup.cli":
            continue
        assert isinstance(function.node, ast.FunctionDef)
        for decorator in function.node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and decorator.func.attr in ("command", "callback")
            ):
                name = (
                    decorator.args[0].value
                    if decorator.args and isinstance(decorator.args[0], ast.Constant)
                    else function.name.replace("_", "-")
                )
                commands[str(name)] = key
    return commands


@pytest.fixture(scope="module")
def package() -> Package:
    return Package()


def test_the_source_scan_finds_the_calls_it_must(package: Package) -> None:
    """The scan itself: known calls of the s3 package are found, with their arguments."""
    upload = package.reachable_operations(("matricula_backup.s3.upload", "upload"))
    names = {operation for operation, _ in upload}
    assert {"PutObject", "CreateMultipartUpload", "UploadPart", "PutObjectRetention"} <= names
    assert ("PutObject", frozenset({ANY_PARAMETER})) in upload  # the CRT's PUT
    heads = {
        p
        for op, p in package.reachable_operations(("matricula_backup.s3.objects", "head"))
        if op == "HeadObject"
    }
    # (A method call is matched by name, so `response.get(...)` also reaches the CRT's
    # `get`: an over-approximation, which only ever asks the policy for more.)
    assert heads and all("VersionId" in parameters for parameters in heads)


def test_every_s3_operation_a_command_reaches_is_allowed_to_its_role(package: Package) -> None:
    commands = _commands(package)
    assert {"backup", "verify", "restore", "iam-policy", "check-config"} <= set(commands)
    needed: dict[str, set[str]] = defaultdict(set)
    for command, key in sorted(commands.items()):
        operations = package.reachable_operations(key)
        role = iam.COMMAND_ROLES.get(command)
        if role is None:
            assert not operations, f"{command} sends S3 requests: give it a role in iam.py"
            continue
        assert operations, command
        for operation, parameters in sorted(operations, key=str):
            for action in _needed(operation, parameters):
                assert iam.allows(role, action), (
                    f"`{command}` (role {role}) sends {operation} "
                    f"({', '.join(sorted(parameters)) or 'no special arguments'}), which needs "
                    f"{action}: not in the {role} policy of iam.py"
                )
                needed[role].add(action)
    # ... and the roles grant nothing the code does not use.
    for role in ("backup", "restore"):
        assert set(iam.ROLE_ACTIONS[role]) == needed[role], role


def test_the_nightly_role_cannot_destroy_history() -> None:
    backup = iam.policy("backup", "matricula-", "eu-central-1")
    allowed = {a for s in backup["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    denied = {a for s in backup["Statement"] if s["Effect"] == "Deny" for a in s["Action"]}
    assert set(iam.NEVER_UNATTENDED) <= denied
    assert not allowed & denied and not any("*" in action for action in allowed)
    assert "s3:DeleteObject" in allowed  # delete markers only: versions stay
    for action in iam.NEVER_UNATTENDED:
        assert not iam.allows("backup", action)
        assert iam.allows("admin", action)
    restore = iam.policy("restore", "matricula-")
    writes = {a for s in restore["Statement"] for a in s["Action"] if "Put" in a or "Delete" in a}
    assert writes == set()


def test_iam_policy_prints_each_role_scoped_to_the_prefix(setup: Setup) -> None:
    setup.write_config(backup__folders=[str(setup.images)], backup__bucket_prefix="matricula-")
    for role in iam.ROLES:
        result = setup.run("iam-policy", "--role", role)
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document == iam.policy(role, "matricula-", "eu-central-1")
        for statement in document["Statement"]:
            resources = statement["Resource"]
            for resource in resources if isinstance(resources, list) else [resources]:
                assert resource == "*" or resource.startswith("arn:aws:s3:::matricula-*"), role
    assert setup.run("iam-policy").stdout == setup.run("iam-policy", "--role", "backup").stdout
    wrong = setup.run("iam-policy", "--role", "root")
    assert wrong.returncode == 2 and "use one of backup, restore, admin" in wrong.stderr


def test_iam_policy_warns_when_the_policy_covers_every_bucket(setup: Setup) -> None:
    setup.write_config(backup__folders=[str(setup.images)])
    result = setup.run("iam-policy")
    assert result.returncode == 0
    assert "backup.bucket_prefix is empty" in result.stderr
    assert '"arn:aws:s3:::*"' in result.stdout


def test_iam_policy_can_pin_the_buckets_to_the_account(setup: Setup) -> None:
    setup.write_config(backup__folders=[str(setup.images)], backup__bucket_prefix="matricula-")
    result = setup.run("iam-policy", "--account", "123456789012")
    assert result.returncode == 0, result.stderr
    for statement in json.loads(result.stdout)["Statement"]:
        if statement["Effect"] == "Allow":
            assert statement["Condition"] == {
                "StringEquals": {"s3:ResourceAccount": "123456789012"}
            }
    assert setup.run("iam-policy", "--account", "12345").returncode == 2
