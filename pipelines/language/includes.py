"""``include:`` — merge the entry file with the local files it includes (pure: files come as text).

Included files are deep-merged in order, nested includes first, and the including file goes last so
its keys win, as in GitLab. Paths are relative to the repository root (a leading ``/`` is allowed);
``..`` that leaves the repository is refused; ``*`` and ``**`` pick every matching given file.
``include: project`` (with ``ref`` and ``file``) names files of another repository: the caller
fetches them (the planner does no I/O) and passes each under :func:`project_key`; a local include
inside such a file names a file of that same repository and ref, as on GitLab. Remote, template
and component includes are reported as unsupported by name and place.

>>> sink = ProblemSink()
>>> files = {"ci.yml": "include: lib.yml\\na: {script: x}\\n", "lib.yml": ".t: {image: alpine}\\n"}
>>> composed = compose_sources(files, "ci.yml", CTX, sink)
>>> sorted(composed.config.entries) if composed else None
['.t', 'a']
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.language.globs import compile_glob
from pipelines.language.problems import Loc, ProblemSink
from pipelines.language.reader import flatten_items, read_str, read_str_list, wrong_type
from pipelines.language.rules import RuleContext, first_match, read_rules
from pipelines.language.schema import check_keys
from pipelines.language.variables import expand
from pipelines.language.yamltree import YItem, YMap, YNode, YScalar, YSeq, parse_yaml

CTX = RuleContext({}, None, frozenset(), "push", "main", "branch")
_MAX_INCLUDES = 150
_MAX_DEPTH = 100
_REFUSED_KINDS = ("remote", "template", "component")
_PROJECT_PREFIX = "project:"
_VARIABLE = re.compile(r"\$(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class Composed:
    config: YMap
    unresolved: tuple[Loc, ...]  # includes that were refused or not found


def deep_merge(base: YMap, over: YMap) -> YMap:
    """GitLab's deep merge: mappings merge key by key, anything else in ``over`` replaces."""
    entries = dict(base.entries)
    for key, item in over.entries.items():
        old = entries.get(key)
        if old is not None and isinstance(old.value, YMap) and isinstance(item.value, YMap):
            entries[key] = YItem(item.key_loc, deep_merge(old.value, item.value))
        else:
            entries[key] = item
    return YMap(entries, over.loc)


def normalize_local_path(path: str) -> str | None:
    """The repository-relative path, or None when it would leave the repository.

    >>> normalize_local_path("/ci/../ci/a.yml"), normalize_local_path("../etc/passwd")
    ('ci/a.yml', None)
    """
    text = path.strip()
    if not text or "\\" in text or "\x00" in text:
        return None
    relative = posixpath.normpath(text.lstrip("/"))
    if relative in (".", "..") or relative.startswith("../"):
        return None
    return relative


def project_key(project: str, ref: str, path: str) -> str:
    """The name under which a file of another repository is given to the planner (``ref`` empty:
    the project's default branch, as GitLab's ``include: project`` without ``ref``).

    >>> project_key("acme/ci", "v1", "templates/build.yml")
    'project:acme/ci@v1:templates/build.yml'
    """
    return f"{_PROJECT_PREFIX}{project}@{ref}:{path}"


def split_project_key(key: str) -> tuple[str, str, str] | None:
    """``(project, ref, path)`` of a :func:`project_key`, None for a file of this repository.

    >>> split_project_key("project:acme/ci@v1:a.yml"), split_project_key("ci/a.yml")
    (('acme/ci', 'v1', 'a.yml'), None)
    """
    if not key.startswith(_PROJECT_PREFIX):
        return None
    head, sep, path = key[len(_PROJECT_PREFIX):].partition(":")
    project, at, ref = head.rpartition("@")
    return (project, ref, path) if sep and at else None


@dataclass(frozen=True, slots=True)
class ProjectInclude:
    """One ``include: project`` a file names (for the caller that fetches its files)."""

    project: str
    ref: str
    files: tuple[str, ...]


class _Composer:
    def __init__(self, files: Mapping[str, str], ctx: RuleContext, sink: ProblemSink) -> None:
        self.files = files
        self.ctx = ctx
        self.sink = sink
        self.unresolved: list[Loc] = []
        self.loaded: set[str] = set()
        self.count = 0

    def load(self, path: str, depth: int) -> YMap | None:
        tree = parse_yaml(self.files[path], path, self.sink)
        source = split_project_key(path)
        if tree is None:
            return None
        if not isinstance(tree, YMap):
            self.sink.error(
                tree.loc,
                "yaml-structure",
                f"{path} must be a mapping of keys to jobs",
                "start the file with `stages:`, `variables:` or a job name",
            )
            return None
        include = tree.get("include")
        if include is None:
            return tree
        merged = YMap({}, tree.loc)
        origin = source[:2] if source is not None else None
        for included in self._includes(include, depth, origin):
            merged = deep_merge(merged, included)
        own = YMap({k: v for k, v in tree.entries.items() if k != "include"}, tree.loc)
        return deep_merge(merged, own)

    def _includes(self, node: YNode, depth: int, origin: tuple[str, str] | None) -> list[YMap]:
        items = flatten_items(node, "include", self.sink) if isinstance(node, YSeq) else [node]
        out: list[YMap] = []
        for item in items:
            for path in self._paths(item, origin):
                if path in self.loaded:
                    continue  # GitLab loads a file once however often it is named
                self.loaded.add(path)
                self.count += 1
                if self.count > _MAX_INCLUDES or depth >= _MAX_DEPTH:
                    self.sink.error(
                        item.loc,
                        "invalid-value",
                        "more than 150 included files or 100 levels",
                        "include fewer files",
                    )
                    return out
                tree = self.load(path, depth + 1)
                if tree is not None:
                    out.append(tree)
        return out

    def _paths(self, item: YNode, origin: tuple[str, str] | None) -> list[str]:
        if isinstance(item, YScalar) and isinstance(item.value, str):
            text = item.value
            if text.startswith(("http://", "https://")):
                self.sink.error(
                    item.loc,
                    "unsupported",
                    f"`remote` include ({text}) is GitLab syntax sandpit cannot run",
                    "download the file into this repository and use `include: local`",
                )
                self.unresolved.append(item.loc)
                return []
            return self._local(text, item, origin)
        if not isinstance(item, YMap):
            wrong_type(item, "an include", "a path or a mapping", self.sink, "include: {local: ci/build.yml}")
            return []
        check_keys(item, "include", self.sink)
        rules_node = item.get("rules")
        if rules_node is not None:
            rules = read_rules(rules_node, "include:rules", self.sink, "rule")
            if first_match(rules, self.ctx).when == "never":
                return []
        for kind in _REFUSED_KINDS:
            if item.get(kind) is not None:
                self.unresolved.append(item.loc)  # check_keys already reported it by name
                return []
        if item.get("project") is not None:
            return self._project(item)
        for key in ("ref", "file"):
            if item.get(key) is not None:
                self.sink.error(item.key_loc(key), "invalid-value", f"`{key}` belongs to an `include: project`",
                                "add `project: group/name`, or use `local:` for a file of this repository")
        local = item.get("local")
        if local is None:
            self.sink.error(
                item.loc,
                "invalid-value",
                "an include needs `local:` (or an unsupported kind)",
                "write include: {local: path/in/repo.yml}",
            )
            return []
        local_text = read_str(local, "include:local", self.sink)
        return [] if local_text is None else self._local(local_text, local, origin)

    def _project(self, item: YMap) -> list[str]:
        """The given files of an ``include: project`` (every one it names must be there)."""
        project_node, ref_node, file_node = item.get("project"), item.get("ref"), item.get("file")
        project = read_str(project_node, "include:project", self.sink) if project_node is not None else None
        ref = read_str(ref_node, "include:ref", self.sink) if ref_node is not None else ""
        if file_node is None:
            self.sink.error(item.loc, "invalid-value", "an `include: project` needs `file:`",
                            "write include: {project: group/name, ref: main, file: /templates/ci.yml}")
            return []
        files = read_str_list(file_node, "include:file", self.sink) if isinstance(file_node, YSeq) else (
            (read_str(file_node, "include:file", self.sink) or "",))
        if project is None or ref is None or files is None:
            return []
        project, ref = expand(project, self.ctx.variables).strip("/"), expand(ref, self.ctx.variables)
        found: list[str] = []
        for text in files:
            path = normalize_local_path(expand(text, self.ctx.variables))
            if path is None:
                self.sink.error(file_node.loc, "include-outside-repo", f"include file `{text}` leaves the repository",
                                "name a file inside that repository, relative to its root")
                self.unresolved.append(item.loc)
                continue
            key = project_key(project, ref, path)
            if key in self.files:
                found.append(key)
                continue
            at = f" at `{ref}`" if ref else ""
            self.sink.error(file_node.loc, "include-not-found",
                            f"`{path}` of project `{project}`{at} could not be read",
                            "sandpit reads project includes only from repositories registered with it "
                            "(sandpit repos add); check the project's name, the ref and the path")
            self.unresolved.append(item.loc)
        return found

    def _local(self, text: str, node: YNode, origin: tuple[str, str] | None = None) -> list[str]:
        # GitLab expands predefined and pipeline variables in include paths (not the file's own)
        text = expand(text, self.ctx.variables)
        path = normalize_local_path(text)
        if path is None:
            self.sink.error(
                node.loc,
                "include-outside-repo",
                f"include `{text}` leaves the repository",
                "name a file inside the repository, relative to its root",
            )
            self.unresolved.append(node.loc)
            return []
        if origin is not None:  # a file of another project: its local includes are that project's files
            prefix = project_key(*origin, "")
            names = {key[len(prefix):]: key for key in self.files if key.startswith(prefix)}
        else:
            names = {key: key for key in self.files if not key.startswith(_PROJECT_PREFIX)}
        if any(char in path for char in "*?[{"):
            regex = compile_glob(path, include=True)
            found = sorted(names[p] for p in names if regex.match(p))
        else:
            found = [names[path]] if path in names else []
        if not found:
            self.sink.error(
                node.loc,
                "include-not-found",
                f"included file `{text}` is not in the repository",
                "check the path (relative to the repository root) and that the file is committed",
            )
            self.unresolved.append(node.loc)
        return found


def local_include_patterns(text: str, file: str) -> list[str]:
    """The ``include: local`` paths (maybe globs) a file names, for a loader that reads them from disk.
    A variable in a path (its value is known only to the planner) reads as ``*``: the loader fetches
    every candidate, and the planner picks the one the variable names.

    >>> local_include_patterns("include: [a.yml, {local: /ci/*.yml}, {remote: http://x}]", "ci.yml")
    ['a.yml', 'ci/*.yml']
    """
    tree = parse_yaml(text, file, ProblemSink())
    include = tree.get("include") if isinstance(tree, YMap) else None
    if include is None:
        return []
    items = include.items if isinstance(include, YSeq) else (include,)
    found: list[str] = []
    for item in items:
        node = item.get("local") if isinstance(item, YMap) else item
        if isinstance(node, YScalar) and isinstance(node.value, str) and "://" not in node.value:
            path = normalize_local_path(_VARIABLE.sub("*", node.value))
            if path is not None:
                found.append(path)
    return found



def project_includes(text: str, file: str) -> list[ProjectInclude]:
    """The ``include: project`` entries a file names (project, ref, files; variables left as
    written), for a loader that fetches them.

    >>> project_includes("include: {project: acme/ci, ref: v1, file: [a.yml, /b.yml]}", "ci.yml")
    [ProjectInclude(project='acme/ci', ref='v1', files=('a.yml', 'b.yml'))]
    """
    tree = parse_yaml(text, file, ProblemSink())
    include = tree.get("include") if isinstance(tree, YMap) else None
    if include is None:
        return []
    found: list[ProjectInclude] = []
    for item in include.items if isinstance(include, YSeq) else (include,):
        if not isinstance(item, YMap):
            continue
        project, ref, files = item.get("project"), item.get("ref"), item.get("file")
        if not (isinstance(project, YScalar) and isinstance(project.value, str)) or files is None:
            continue
        ref_text = ref.value if isinstance(ref, YScalar) and isinstance(ref.value, str) else ""
        names = files.items if isinstance(files, YSeq) else (files,)
        paths = tuple(p for n in names if isinstance(n, YScalar) and isinstance(n.value, str)
                      if (p := normalize_local_path(n.value)) is not None)
        found.append(ProjectInclude(project.value.strip("/"), ref_text, paths))
    return found

def compose_sources(
    files: Mapping[str, str], entry: str, ctx: RuleContext, sink: ProblemSink
) -> Composed | None:
    """The merged configuration of ``entry`` and its local includes; None if the entry is unusable."""
    composer = _Composer(files, ctx, sink)
    composer.loaded.add(entry)
    config = composer.load(entry, 0)
    if config is None:
        return None
    return Composed(config, tuple(composer.unresolved))
