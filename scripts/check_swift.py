#!/usr/bin/env python3
"""Checks the hand-written Swift SDK against freshly generated UniFFI Swift bindings, without a
Swift toolchain (none can be had on our Linux CI):

1. every hand-written file parses (tree-sitter-swift: syntax only, no type checking);
2. every generated type it names (`EdgeCascadeBindings.X`) is declared in the bindings;
3. every method it calls on the generated `Runtime` and `GenerationHandle`, and every free
   function, exists there with the argument labels used;
4. every generated initialiser it calls gets exactly the generated labels, in order;
5. the listener methods it implements (chat, pull, log) match the generated protocol;
6. every `.member` it uses is declared in the SDK itself, in the bindings, or on the short list
   of Apple and Swift APIs below;
7. the privacy manifest parses and gives a reason for each required-reason API we call.

Usage: check_swift.py GENERATED_DIR SWIFT_FILE...  Prints one line per check; exit 1 on failure.
"""
import plistlib
import re
import sys
from pathlib import Path

import tree_sitter
import tree_sitter_swift

# Members of Apple and Swift standard APIs the SDK uses (rule 6). Adding one here is a claim
# that it exists on the platform: check it against Apple's documentation.
PLATFORM = set("""
    value withCheckedThrowingContinuation withTaskCancellationHandler resume yield finish
    onTermination detached userInitiated map lock unlock processInfo thermalState
    isLowPowerModeEnabled current isBatteryMonitoringEnabled batteryLevel batteryState charging
    full shared applicationState thermalStateDidChangeNotification NSProcessInfoPowerStateDidChange
    batteryLevelDidChangeNotification batteryStateDidChangeNotification didEnterBackgroundNotification
    willEnterForegroundNotification default addObserver removeObserver main pathUpdateHandler
    append init status satisfied isExpensive isConstrained start cancel forEach assumeIsolated Name
    nominal fair serious critical none
    warning error info debug public
    deletingLastPathComponent createDirectory isExcludedFromBackup setResourceValues
    checkCancellation filter isEmpty didReceiveMemoryWarningNotification
""".split())


def fail(msg):
    print(f"check-swift: FAIL {msg}")
    return 1


def main():
    gen_dir, files = Path(sys.argv[1]), [Path(f) for f in sys.argv[2:]]
    gen = "\n".join(p.read_text() for p in sorted(gen_dir.glob("*.swift")))
    # Comments out; declarations joined onto one line ("public \nenum X" happens).
    gen = re.sub(r"/\*.*?\*/", "", gen, flags=re.S)
    gen = re.sub(r"//[^\n]*", "", gen)
    gen = re.sub(r"\b(public|open)\s*\n\s*", r"\1 ", gen)
    sdk = {f: f.read_text() for f in files}
    errors = 0

    # 1. Syntax.
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))
    for f, src in sdk.items():
        bad = []

        def walk(n):
            if n.type == "ERROR" or n.is_missing:
                bad.append(n.start_point)
                return
            for c in n.children:
                walk(c)

        walk(parser.parse(src.encode()).root_node)
        if bad:
            errors += fail(f"{f}: syntax errors at {[(p.row + 1, p.column + 1) for p in bad[:5]]}")
    print(f"check-swift: parsed {len(sdk)} files")

    all_sdk = "\n".join(sdk.values())
    # Strip comments and string literals for the name checks.
    code = re.sub(r"//[^\n]*", "", all_sdk)
    code = re.sub(r'"(?:\\.|[^"\\])*"', '""', code)

    # 2. Generated types named.
    declared = set(re.findall(r"^(?:public |open )+(?:final )?(?:struct|enum|class|protocol|typealias) (\w+)", gen, re.M))
    named = set(re.findall(r"EdgeCascadeBindings\.(\w+)", code))
    for n in sorted(named - declared):
        errors += fail(f"EdgeCascadeBindings.{n} is not declared in the generated bindings")
    print(f"check-swift: {len(named)} generated types named")

    # 3. Methods and free functions, with labels.
    def generated_funcs(body):
        out = {}
        for name, params in re.findall(r"\bfunc (\w+)\(([^)]*)\)", body):
            labels = [p.split(":")[0].split()[0] for p in params.split(",") if ":" in p]
            out.setdefault(name, []).append(labels)
        return out

    def block(decl):
        start = gen.find(decl)
        if start < 0:
            return ""
        end = gen.find("\n}", start)
        return gen[start:end]

    runtime = generated_funcs(block("public protocol RuntimeProtocol"))
    handle = generated_funcs(block("public protocol GenerationHandleProtocol"))
    free = generated_funcs("\n".join(re.findall(r"^public func [^\n]*", gen, re.M)))
    calls = 0
    for recv, name, args in re.findall(r"\b(runtime|handle|h)\.(\w+)\(([^()]*(?:\([^()]*\)[^()]*)*)\)", code):
        table = runtime if recv == "runtime" else handle
        if recv == "handle" and name in ("set", "cancel") and name not in handle:
            continue
        if recv == "handle" and name == "set":
            continue  # HandleBox.set, the SDK's own
        labels = re.findall(r"(?:^|,)\s*(\w+):", args)
        calls += 1
        if name not in table:
            errors += fail(f"{recv}.{name}(...) is not a generated method")
        elif labels not in table[name]:
            errors += fail(f"{recv}.{name}({', '.join(l + ':' for l in labels)}) does not match {table[name]}")
    for name in ("configFromToml", "defaultConfig", "defaultRemoteConfig", "edgecascadeVersion", "pullModel", "modelCatalog"):
        for args in re.findall(rf"\b{name}\(([^()]*)\)", code):
            labels = re.findall(r"(?:^|,)\s*(\w+):", args)
            calls += 1
            if labels not in free.get(name, []):
                errors += fail(f"{name}({', '.join(l + ':' for l in labels)}) does not match {free.get(name)}")
    print(f"check-swift: {calls} calls into the bindings")

    # 4. Initialisers: EdgeCascadeBindings.X( label: ..., ... ) against X's generated init.
    inits = 0
    for m in re.finditer(r"EdgeCascadeBindings\.(\w+)\(", code):
        name, i, depth = m.group(1), m.end(), 1
        while depth:
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
        args = code[m.end() : i - 1]
        # Top-level labels only.
        labels, depth = [], 0
        for tok in re.finditer(r"[()\[\]{}]|(?:^|,)\s*(`?\w+`?)\s*:", args):
            t = tok.group(0)
            if t in "([{":
                depth += 1
            elif t in ")]}":
                depth -= 1
            elif depth == 0:
                labels.append(tok.group(1).strip("`"))
        body = block(f"public struct {name}:") or block(f"public struct {name} ")
        if not body:
            continue  # a class (Runtime) or not a record: covered by rule 2
        init = re.search(r"public init\(([^)]*)\)", body, re.S)
        want = [p.strip().split(":")[0].split()[0].strip("`") for p in init.group(1).split(",") if ":" in p]
        inits += 1
        if labels != want:
            errors += fail(f"EdgeCascadeBindings.{name}({', '.join(labels)}) but the generated init takes ({', '.join(want)})")
    print(f"check-swift: {inits} generated initialisers called")

    # 5. The listener protocols.
    norm = lambda s: re.sub(r"\s+", " ", s.replace("EdgeCascadeBindings.", "")).strip()
    for listener in ("ChatListener", "PullListener", "LogListener"):
        proto = {norm(s) for s in re.findall(r"func on\w+\([^)]*\)", block(f"public protocol {listener}"))}
        if not proto:
            errors += fail(f"the bindings have no {listener} protocol")
        impls = re.findall(rf"class \w+: EdgeCascadeBindings\.{listener}.*?\n}}", code, re.S)
        for cls in impls:
            have = {norm(s) for s in re.findall(r"func on\w+\([^)]*\)", cls)}
            # A typealias in the SDK may name a generated type differently (PullOutcome).
            if have != proto:
                errors += fail(f"a {listener} implements {sorted(have)}, the protocol wants {sorted(proto)}")
        print(f"check-swift: {listener}: {len(proto)} methods, {len(impls)} implementations")

    # 6. Every .member resolves.
    known = set(re.findall(r"\b(?:var|let|case|func|class|struct|enum|typealias|init)\s+`?(\w+)", gen + "\n" + code))
    known |= set(re.findall(r"case\s+(\w+)\s*\(", code))
    known |= set(re.findall(r"\b(\w+):", code))  # labels and parameter names
    known |= PLATFORM
    members = set(re.findall(r"(?<![\w.])(?:\w+|\)|\?|\])?\.([a-z]\w*)", code))
    unknown = sorted(members - known)
    for n in unknown:
        errors += fail(f".{n} is declared neither in the SDK, nor in the bindings, nor on the platform list")
    print(f"check-swift: {len(members)} member names resolved")

    # 7. The privacy manifest: a valid plist, declared as a resource, with a reason for each
    #    required-reason API the library calls.
    manifest = Path("ios/Sources/EdgeCascade/PrivacyInfo.xcprivacy")
    try:
        plist = plistlib.loads(manifest.read_bytes())
        declared = {a["NSPrivacyAccessedAPIType"]: a["NSPrivacyAccessedAPITypeReasons"]
                    for a in plist["NSPrivacyAccessedAPITypes"]}
        for api in ("DiskSpace", "FileTimestamp", "SystemBootTime"):
            if not declared.get(f"NSPrivacyAccessedAPICategory{api}"):
                errors += fail(f"{manifest} gives no reason for {api}")
        if plist.get("NSPrivacyTracking") is not False:
            errors += fail(f"{manifest}: NSPrivacyTracking must be false")
        if "PrivacyInfo.xcprivacy" not in Path("ios/Package.swift").read_text():
            errors += fail("ios/Package.swift does not ship the privacy manifest as a resource")
        print(f"check-swift: privacy manifest: {len(declared)} API categories with reasons")
    except (OSError, plistlib.InvalidFileException, KeyError, TypeError) as e:
        errors += fail(f"{manifest}: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
