// Reading untrusted JSON (stdin configs, other plugins' results) into typed values, naming the bad path.
import { CniError } from './errors';

export type JsonObject = Record<string, unknown>;

/** Where a value sits (for messages) and which CNI code a wrong shape gets there. */
export interface ShapeContext {
  code: number;
  path: string;
}

export function isJsonObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`;
}

export function shapeError(ctx: ShapeContext, expected: string, got: unknown): CniError {
  return new CniError(ctx.code, `${ctx.path}: expected ${expected}, got ${kindOf(got)}`);
}

export function at(ctx: ShapeContext, key: string | number): ShapeContext {
  return { code: ctx.code, path: typeof key === 'number' ? `${ctx.path}[${key}]` : `${ctx.path}.${key}` };
}

export function expectObject(v: unknown, ctx: ShapeContext): JsonObject {
  if (!isJsonObject(v)) throw shapeError(ctx, 'an object', v);
  return v;
}

// In the optional readers, null is absent: Go's decoder leaves a field at its zero value for a JSON null, so
// a result a plugin in another language writes with "dns": null reads as the reference plugins read it.

export function optionalObject(o: JsonObject, key: string, ctx: ShapeContext): JsonObject | undefined {
  const v = o[key];
  return v === undefined || v === null ? undefined : expectObject(v, at(ctx, key));
}

export function optionalString(o: JsonObject, key: string, ctx: ShapeContext): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw shapeError(at(ctx, key), 'a string', v);
  return v;
}

export function requiredString(o: JsonObject, key: string, ctx: ShapeContext): string {
  const v = optionalString(o, key, ctx);
  if (v === undefined) throw new CniError(ctx.code, `${at(ctx, key).path}: missing`);
  return v;
}

/** A non-negative integer (indices, MTUs, table ids). */
export function optionalUint(o: JsonObject, key: string, ctx: ShapeContext): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw shapeError(at(ctx, key), 'a non-negative integer', v);
  }
  return v;
}

export function optionalArray(o: JsonObject, key: string, ctx: ShapeContext): unknown[] | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw shapeError(at(ctx, key), 'an array', v);
  return v;
}

export function optionalStringArray(o: JsonObject, key: string, ctx: ShapeContext): string[] | undefined {
  const arr = optionalArray(o, key, ctx);
  if (arr === undefined) return undefined;
  return arr.map((item, i) => {
    if (typeof item !== 'string') throw shapeError(at(at(ctx, key), i), 'a string', item);
    return item;
  });
}

/** Reads an optional array of objects, each through `read`. */
export function optionalObjects<T>(
  o: JsonObject,
  key: string,
  ctx: ShapeContext,
  read: (item: JsonObject, ctx: ShapeContext) => T,
): T[] | undefined {
  const arr = optionalArray(o, key, ctx);
  if (arr === undefined) return undefined;
  return arr.map((item, i) => {
    const itemCtx = at(at(ctx, key), i);
    return read(expectObject(item, itemCtx), itemCtx);
  });
}

/**
 * Drops keys whose value is undefined, keeping the order of the rest: results are built field by field
 * in the spec's order and printed with the omitempty behaviour of the Go types.
 */
export function withoutUndefined<T extends object>(o: T): T {
  const out = {} as Record<string, unknown>;
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out as T;
}
