"""A job's ``services:``: read and checked with their locations, expanded per job, and the host
names each service answers to (pure).

``services:`` (in a job, in ``default:``, or at the top level as GitLab's deprecated global form)
is a list whose items are an image reference or ``{name, alias, entrypoint, command, variables,
pull_policy}``. Every problem is reported with its place, as for the other keys.

The names a service answers to follow GitLab Runner: the explicit ``alias`` (several may be given,
separated by commas or spaces, as Runner 15.7+ accepts), then two names derived from the image
name. Runner's ``SplitNameAndVersion`` (read in gitlab-runner's ``executors/docker`` and
``kubernetes`` sources, and GitLab's "Accessing the services" documentation) strips the tag and
digest, drops the registry's port, and replaces each ``/`` with ``__`` (the primary name) and with
``-`` (the secondary one, given only when it differs)::

    postgres:16                       -> postgres
    tutum/wordpress:latest            -> tutum__wordpress, tutum-wordpress
    registry.example.com:5000/ns/my-db:1 -> registry.example.com__ns__my-db, registry.example.com-ns-my-db

>>> service_aliases(Service("registry.example.com:5000/ns/my-db:1", alias="db"))
('db', 'registry.example.com__ns__my-db', 'registry.example.com-ns-my-db')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.language.model import Service
from pipelines.language.problems import Loc, ProblemSink
from pipelines.language.reader import flatten_items, read_map, read_str, read_str_list, wrong_type
from pipelines.language.schema import check_keys
from pipelines.language.variables import expand
from pipelines.language.yamltree import YMap, YNode, YScalar, YSeq
from pipelines.references import InvalidReference, parse_reference

#: at most this many services beside one job: each is a container with its own rootfs
MAX_SERVICES = 16
PULL_POLICIES = ("always", "if-not-present", "never")
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
#: a host name in /etc/hosts: letters, digits and ``. _ -`` (Runner's derived ``__`` names included),
#: starting and ending with a letter or digit; nothing a hosts line would read as a separator or
#: a comment (whitespace, ``#``), no control character
_ALIAS = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?"


@dataclass(frozen=True, slots=True)
class ServiceDef:
    """A service as written (variables not yet expanded), with where it was written."""

    name: str
    loc: Loc
    alias: str | None = None
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    variables: tuple[tuple[str, str], ...] = ()
    pull_policy: tuple[str, ...] | None = None


def is_alias(text: str) -> bool:
    """Whether ``text`` may be a service's host name (it becomes a word of the job's /etc/hosts).

    >>> is_alias("my-db"), is_alias("tutum__wordpress"), is_alias("a b"), is_alias("db#x"), is_alias("-x")
    (True, True, False, False, False)
    """
    return re.fullmatch(_ALIAS, text, re.ASCII) is not None


def split_aliases(alias: str | None) -> tuple[str, ...]:
    """The names an ``alias:`` value gives (comma- or space-separated).

    >>> split_aliases("pg, postgres db"), split_aliases(None)
    (('pg', 'postgres', 'db'), ())
    """
    if not alias:
        return ()
    return tuple(part for part in re.split(r"[,\s]+", alias) if part)


def derived_aliases(name: str) -> tuple[str, ...]:
    """The names GitLab Runner derives from a service's image name (see the module docstring);
    () for a name that is no image reference.

    >>> derived_aliases("postgres:16"), derived_aliases("localhost:5000/team/app@sha256:" + "a" * 64)
    (('postgres',), ('localhost__team__app', 'localhost-team-app'))
    """
    try:
        ref = parse_reference(name)
    except InvalidReference:
        return ()
    host = ref.domain.partition(":")[0] if ref.domain else None
    service = f"{host}/{ref.path}" if host else ref.path
    primary, secondary = service.replace("/", "__"), service.replace("/", "-")
    return (primary,) if primary == secondary else (primary, secondary)


def service_aliases(service: Service) -> tuple[str, ...]:
    """Every host name of ``service``: its own aliases first, then the derived ones, once each.

    >>> service_aliases(Service("postgres:16")), service_aliases(Service("redis", alias="cache,redis"))
    (('postgres',), ('cache', 'redis'))
    """
    names: list[str] = []
    for name in (*split_aliases(service.alias), *derived_aliases(service.name)):
        if name not in names:
            names.append(name)
    return tuple(names)


def expand_service(service: ServiceDef, variables: Mapping[str, str]) -> Service:
    """The service of one job: its name, alias and variable values with the job's variables
    expanded (Runner expands them too: ``name: $CI_REGISTRY_IMAGE/db:latest``).

    >>> d = ServiceDef("$REG/db:1", Loc("ci", 1, 1), alias="db", variables=(("URL", "$REG/x"),))
    >>> s = expand_service(d, {"REG": "reg.example"}); s.name, s.variables
    ('reg.example/db:1', (('URL', 'reg.example/x'),))
    """
    return Service(
        name=expand(service.name, variables),
        alias=None if service.alias is None else expand(service.alias, variables),
        entrypoint=service.entrypoint,
        command=service.command,
        variables=tuple((name, expand(value, variables)) for name, value in service.variables),
        pull_policy=service.pull_policy,
    )


def read_services(node: YNode, sink: ProblemSink) -> tuple[ServiceDef, ...]:
    """``services:`` as written: every problem reported at its place, the usable services kept."""
    if not isinstance(node, YSeq):
        wrong_type(node, "services", "a list", sink, "services: [postgres:16]")
        return ()
    out: list[ServiceDef] = []
    items = flatten_items(node, "services", sink)
    for item in items:
        service = _read_service(item, sink)
        if service is not None:
            out.append(service)
    if len(items) > MAX_SERVICES:
        sink.error(node.loc, "invalid-value", f"{len(items)} services; sandpit runs at most {MAX_SERVICES} "
                   "beside one job", "split the job, or drop the services it does not use")
    return tuple(out)


def _read_service(item: YNode, sink: ProblemSink) -> ServiceDef | None:
    if not isinstance(item, YMap):
        name = read_str(item, "services", sink)
        if name is None or not _check_name(name, item, sink):
            return None
        return ServiceDef(name, item.loc)
    check_keys(item, "service", sink)
    name_node = item.get("name")
    if name_node is None:
        sink.error(item.loc, "invalid-value", "a service needs a `name:` (its image)",
                   "write - name: postgres:16")
        return None
    name = read_str(name_node, "services:name", sink)
    usable = name is not None and _check_name(name, name_node, sink)
    alias = None
    if (alias_node := item.get("alias")) is not None:
        alias = read_str(alias_node, "services:alias", sink)
        if alias is not None and "$" not in alias:
            bad = [a for a in split_aliases(alias) if not is_alias(a)] or ([] if split_aliases(alias) else [alias])
            if bad:
                sink.error(alias_node.loc, "invalid-value",
                           f"service alias {bad[0][:80]!r} is not a host name: use letters, digits and "
                           "'.', '_', '-' (several aliases separated by commas)", "write alias: my-db")
                usable = False
    entrypoint = command = None
    if (entry_node := item.get("entrypoint")) is not None:
        entrypoint = read_str_list(entry_node, "services:entrypoint", sink)
    if (command_node := item.get("command")) is not None:
        command = read_str_list(command_node, "services:command", sink)
    variables: tuple[tuple[str, str], ...] = ()
    if (vars_node := item.get("variables")) is not None:
        variables = _read_variables(vars_node, sink)
    policy = None
    if (policy_node := item.get("pull_policy")) is not None:
        policy = read_str_list(policy_node, "services:pull_policy", sink)
        bad_policies = [p for p in policy or () if p not in PULL_POLICIES]
        if bad_policies or policy == ():
            sink.error(policy_node.loc, "invalid-value",
                       f"services:pull_policy {', '.join(map(repr, bad_policies)) or 'is empty'}: each must be "
                       "one of " + ", ".join(PULL_POLICIES), "write pull_policy: if-not-present")
            policy = None
    if not usable or name is None:
        return None
    return ServiceDef(name, name_node.loc, alias, entrypoint, command, variables, policy)


def _check_name(name: str, node: YNode, sink: ProblemSink) -> bool:
    """A service's image must be an image reference (judged after expansion when it has ``$``);
    one that names a registry host or a digest is pulled only from a registry the operator lists,
    a warning as for ``image:``."""
    if "$" in name:
        return True
    try:
        ref = parse_reference(name)
    except InvalidReference as exc:
        sink.error(node.loc, "invalid-value", f"service {exc}", "write services: [postgres:16]")
        return False
    if ref.domain is not None or ref.digest is not None:
        what = f"registry host {ref.domain}" if ref.domain is not None else "a digest"
        sink.warning(node.loc, "image-unavailable",
                     f"service image {ref} names {what}; sandpit pulls it only from a registry the operator "
                     "lists (SANDPIT_REGISTRIES), else this job will fail",
                     "use an image built from images/ (sandpit images list), or ask the operator to list the "
                     "registry")
    return True


def _read_variables(node: YNode, sink: ProblemSink) -> tuple[tuple[str, str], ...]:
    mapping = read_map(node, "services:variables", sink, "variables: {POSTGRES_PASSWORD: secret}")
    if mapping is None:
        return ()
    out: list[tuple[str, str]] = []
    for name, value in mapping.items():
        if re.fullmatch(_ENV_NAME, name, re.ASCII) is None:
            sink.error(mapping.key_loc(name), "invalid-value",
                       f"service variable name {name[:80]!r} is not an environment name",
                       "use letters, digits and _, not starting with a digit")
            continue
        if isinstance(value, YScalar) and (value.value is None or isinstance(value.value, bool)):
            out.append((name, value.text()))
            continue
        text = read_str(value, f"services:variables:{name}", sink)
        if text is not None:
            out.append((name, text))
    return tuple(out)
