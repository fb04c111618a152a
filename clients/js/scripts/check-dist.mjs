// Fails when the committed dist/ differs from a fresh build of src/ (generated code that
// cannot go stale): builds into a temporary folder with the same compiler options and
// compares file by file.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const out = mkdtempSync(join(tmpdir(), "switchboard-js-dist-"));
const tsc = join(pkg, "node_modules", "typescript", "bin", "tsc");
try {
  execFileSync(process.execPath, [tsc, "-p", join(pkg, "tsconfig.json"), "--outDir", out], { stdio: "inherit" });
  const list = (dir) =>
    readdirSync(dir)
      .flatMap((f) => (statSync(join(dir, f)).isDirectory() ? list(join(dir, f)).map((g) => join(f, g)) : [f]))
      .sort();
  const fresh = list(out);
  const committed = list(join(pkg, "dist"));
  const problems = [];
  for (const f of new Set([...fresh, ...committed])) {
    if (!fresh.includes(f)) problems.push(`dist/${f}: not produced by a fresh build (remove it)`);
    else if (!committed.includes(f)) problems.push(`dist/${f}: missing (run npm run build and commit it)`);
    else if (!readFileSync(join(out, f)).equals(readFileSync(join(pkg, "dist", f))))
      problems.push(`dist/${f}: differs from a fresh build of src/ (run npm run build and commit it)`);
  }
  if (problems.length) {
    console.error(problems.join("\n"));
    process.exit(1);
  }
  console.log(`dist/ matches a fresh build (${fresh.length} files)`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
