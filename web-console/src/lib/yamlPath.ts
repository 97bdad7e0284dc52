// A server error's field path (`spec.ingress[0].fromCIDR[0]`) → the place in the text the
// person typed, through the `yaml` package's source ranges (JSON is YAML too).
import { isCollection, isNode, parseDocument, type Node } from "yaml";

export type PathPart = string | number;

export function parseFieldPath(field: string): PathPart[] {
  const parts: PathPart[] = [];
  const re = /([^.[\]]+)|\[(\d+)\]/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(field)) !== null) {
    if (m[2] !== undefined) parts.push(Number(m[2]));
    else parts.push(m[1]);
  }
  return parts;
}

export interface Range {
  from: number;
  to: number;
  /** Whether the whole path was found (else the deepest part that exists). */
  exact: boolean;
}

/**
 * The source range of `field` in `text`. A path the text lacks (a missing key) points at
 * its deepest existing ancestor. `spec.…` and `specs[0].…` name the same rule when the
 * text has the other form.
 */
export function rangeOfField(text: string, field: string): Range | null {
  const doc = parseDocument(text, { keepSourceTokens: false });
  if (doc.errors.length > 0 || !doc.contents) return null;
  let path = parseFieldPath(field);
  const root = doc.contents as Node;
  if (isCollection(root)) {
    if (path[0] === "spec" && !root.has("spec") && root.has("specs")) path = ["specs", 0, ...path.slice(1)];
    else if (path[0] === "specs" && path[1] === 0 && !root.has("specs") && root.has("spec"))
      path = ["spec", ...path.slice(2)];
  }
  let node: Node = root;
  let exact = true;
  for (const part of path) {
    if (!isCollection(node)) {
      exact = false;
      break;
    }
    const next = node.get(part, true);
    if (!isNode(next)) {
      exact = false;
      break;
    }
    node = next;
  }
  if (!node.range) return null;
  const [from, valueEnd] = node.range;
  return { from, to: Math.max(valueEnd, from + 1), exact };
}

/** 1-based line of an offset. */
export function lineOf(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}
