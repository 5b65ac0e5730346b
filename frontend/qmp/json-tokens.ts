// The token representation shared by QMP's JSON lexer (json.ts) and parser (json-parser.ts): a message's
// tokens are one u32 each (type and where its bytes start in the message's arena), and QEMU's limits.

export const MAX_TOKEN_SIZE = 64 * 2 ** 20;
export const MAX_TOKEN_COUNT = 2 * 2 ** 20;
export const MAX_NESTING = 1024;

/** Token types. */
export const enum T {
  LCurly,
  RCurly,
  LSquare,
  RSquare,
  Colon,
  Comma,
  String,
  Integer,
  Float,
  Keyword,
}

/** Work units (bytes lexed or scanned, tokens parsed × TOKEN_COST) between two yields of feedAsync. */
export const SLICE = 64 * 1024;
export const TOKEN_COST = 32;

/** A token: its type in the top bits, where its bytes start in the arena below (< 2^27: the stored
 *  bytes are at most MAX_TOKEN_SIZE). */
export const TYPE_SHIFT = 27;
export const START_MASK = (1 << TYPE_SHIFT) - 1;
