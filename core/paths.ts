// Where the project lives, wherever the compiled file runs from (dist/core/paths.js → ../..).
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';

export const projectRoot = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
