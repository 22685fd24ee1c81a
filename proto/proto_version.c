/* SPDX-License-Identifier: Apache-2.0 */
/* Placeholder translation unit so the library exists before the codec lands. */
int proto_placeholder_symbol;
