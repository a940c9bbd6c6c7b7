/** Keeps the README honest: its example runs as written against the built package. */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.resolve(__dirname, '..');

test("the README's example runs and prints an output, routing and load", () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Example'));
  const match = /```js\n([\s\S]*?)```/.exec(section);
  expect(match).not.toBeNull();
  const code = (match as RegExpExecArray)[1];
  expect(code).toContain("require('moekit')");
  // Run from the repository root: require('moekit') resolves to this package (self-reference).
  const file = path.join(root, 'examples', '.readme-example.tmp.js');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, code);
  try {
    const r = spawnSync(process.execPath, [file], { cwd: root, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^device: cpu/m);
    expect(r.stdout).toMatch(/output \[ 4, 64 \] first values/);
    expect(r.stdout).toMatch(/load \[(\s*\d+,?){8}\s*\] imbalance \d+\.\d\d/);
  } finally {
    fs.rmSync(file, { force: true });
  }
});
