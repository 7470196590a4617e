#!/usr/bin/env python3
"""Checks the module graph (docs/ARCHITECTURE.md, "Modules") against the sources.

- Every `import M` in a target's sources names a dependency the target declares in Package.swift, directly or
  through another dependency, or a module of the platform. SwiftPM builds such an import when the module happens
  to be built first, so a lower module could come to import a higher one unseen: this makes it fail.
- No target the agent links imports Foundation: the agent is one self-contained file, hashed by both sides at
  every connection (it grew from 14 MB to 73 MB once through one such import).
- The pure sync core (SyncRules) imports no platform module at all: its decisions do no I/O, so tables test them.

Exits 1 and names each violation. `--self-test` checks that made-up violations are caught.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLATFORM = {"Foundation", "FoundationEssentials", "Glibc", "Darwin", "Dispatch", "Testing", "XCTest", "Synchronization"}
# Modules of the package's dependencies, by the product names Package.swift uses.
PRODUCT_MODULES = {"ArgumentParser": "ArgumentParser", "Logging": "Logging", "GRDB": "GRDB", "Yams": "Yams"}
AGENT = "syncd-agent"
# Modules of pure decisions: no platform module (no I/O, no Foundation).
PURE = {"SyncRules"}


def parse_package(text):
    """Targets of Package.swift: name -> (dependency names, source directory)."""
    targets = {}
    for match in re.finditer(r'\.(target|executableTarget|testTarget|systemLibrary)\(\s*name:\s*"([^"]+)"', text):
        kind, name = match.group(1), match.group(2)
        # The call's arguments: up to the parenthesis that closes it.
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        args = text[match.end():i - 1]
        deps = []
        d = re.search(r'dependencies:\s*\[', args)
        if d:
            depth, j = 1, d.end()
            while depth:
                depth += {"[": 1, "]": -1}.get(args[j], 0)
                j += 1
            listed = args[d.end():j - 1]
            deps += re.findall(r'(?<![\w.])"([^"]+)"', re.sub(r'\.product\([^)]*\)', "", listed))
            deps += [PRODUCT_MODULES.get(p, p) for p in re.findall(r'\.product\(\s*name:\s*"([^"]+)"', listed)]
        path = re.search(r'path:\s*"([^"]+)"', args)
        default = "Tests/" + name if kind == "testTarget" else "Sources/" + name
        targets[name] = (deps, path.group(1) if path else default)
    return targets


def closure(targets, name):
    seen, todo = set(), list(targets.get(name, ([], ""))[0])
    while todo:
        dep = todo.pop()
        if dep in seen:
            continue
        seen.add(dep)
        todo += targets.get(dep, ([], ""))[0]
    return seen


def violations(targets, imports):
    """`imports`: target -> [(file, line number, module)]. Returns the messages."""
    found = []
    agent_side = closure(targets, AGENT) | {AGENT}
    for name, uses in sorted(imports.items()):
        allowed = closure(targets, name) | PLATFORM | {name}
        for path, line, module in uses:
            if module not in allowed:
                found.append(f"{path}:{line}: {name} imports {module}, which it does not depend on in Package.swift")
            if module == "Foundation" and name in agent_side:
                found.append(f"{path}:{line}: {name} is linked by syncd-agent, which must not link Foundation")
            if name in PURE and module in PLATFORM:
                found.append(f"{path}:{line}: {name} is the pure sync core and imports {module}, a platform module")
    return found


def scan(targets):
    imports = {}
    for name, (_, directory) in targets.items():
        root = os.path.join(ROOT, directory)
        if not os.path.isdir(root):
            continue
        for base, _, files in os.walk(root):
            for f in sorted(files):
                if not f.endswith(".swift"):
                    continue
                path = os.path.join(base, f)
                with open(path, encoding="utf-8") as handle:
                    for number, text in enumerate(handle, 1):
                        m = re.match(r'\s*(?:@testable\s+|@_implementationOnly\s+)?import\s+(?:(?:struct|class|enum|func)\s+)?([A-Za-z_][A-Za-z0-9_]*)', text)
                        if m:
                            imports.setdefault(name, []).append((os.path.relpath(path, ROOT), number, m.group(1)))
    return imports


def self_test(targets):
    made_up = {
        "Chunking": [("Sources/Chunking/X.swift", 1, "Client")],  # a lower module importing a higher one
        "Wire": [("Sources/Wire/X.swift", 1, "Foundation")],      # Foundation on the agent's side
        "Client": [("Sources/Client/X.swift", 1, "Wire"), ("Sources/Client/Y.swift", 2, "Foundation")],  # fine
        "SyncRules": [("Sources/SyncRules/X.swift", 1, "Glibc")],  # I/O in the pure core
    }
    found = violations(targets, made_up)
    expected = ["Chunking imports Client", "Wire is linked by syncd-agent", "SyncRules is the pure sync core"]
    missing = [e for e in expected if not any(e in f for f in found)]
    if missing or len(found) != 3:
        print("check-imports self-test failed: expected", expected, "got", found)
        return 1
    print("check-imports self-test: the three made-up violations caught")
    return 0


def main():
    with open(os.path.join(ROOT, "Package.swift"), encoding="utf-8") as handle:
        targets = parse_package(handle.read())
    if AGENT not in targets or "Client" not in targets:
        print("check-imports: could not read the targets of Package.swift")
        return 1
    if "--self-test" in sys.argv:
        return self_test(targets)
    found = violations(targets, scan(targets))
    for f in found:
        print(f)
    if found:
        return 1
    print(f"check-imports: {len(targets)} targets, every import declared, the agent's side free of Foundation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
