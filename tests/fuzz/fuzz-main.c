/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Replay driver for builds without libFuzzer: runs LLVMFuzzerTestOneInput on every file named on the
 * command line, descending into directories (the seed corpus tests/fuzz/corpus/<target>/). Any crash,
 * sanitizer report or oracle abort fails the test.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int run_file(const char *path, unsigned *count) {
        FILE *f = fopen(path, "rb");
        uint8_t *data = NULL;
        size_t len = 0, cap = 0, n;
        uint8_t chunk[65536];

        if (!f) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return -errno;
        }
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
                if (len + n > cap) {
                        uint8_t *p;

                        cap = (len + n) * 2;
                        p = realloc(data, cap);
                        if (!p) {
                                free(data);
                                fclose(f);
                                return -ENOMEM;
                        }
                        data = p;
                }
                memcpy(data + len, chunk, n);
                len += n;
        }
        fclose(f);
        /* Hand the target an exact-size copy so ASan sees reads past the end. */
        uint8_t *exact = malloc(len ? len : 1);
        if (!exact) {
                free(data);
                return -ENOMEM;
        }
        if (len)
                memcpy(exact, data, len);
        free(data);
        (void) LLVMFuzzerTestOneInput(exact, len);
        free(exact);
        (*count)++;
        return 0;
}

static int cmp_names(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int run_path(const char *path, unsigned *count) {
        struct stat st;
        DIR *dir;
        struct dirent *de;
        char **names = NULL;
        size_t n = 0;
        int r = 0;

        if (stat(path, &st) < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return -errno;
        }
        if (!S_ISDIR(st.st_mode))
                return run_file(path, count);

        dir = opendir(path);
        if (!dir)
                return -errno;
        while ((de = readdir(dir))) {
                char **p;

                if (de->d_name[0] == '.')
                        continue;
                p = realloc(names, (n + 1) * sizeof(*names));
                if (!p) {
                        r = -ENOMEM;
                        break;
                }
                names = p;
                if (asprintf(&names[n], "%s/%s", path, de->d_name) < 0) {
                        r = -ENOMEM;
                        break;
                }
                n++;
        }
        closedir(dir);
        if (r == 0) {
                /* Sorted, so a failure is reproducible by name. */
                qsort(names, n, sizeof(*names), cmp_names);
                for (size_t i = 0; i < n && r == 0; i++)
                        r = run_path(names[i], count);
        }
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
        return r;
}

int main(int argc, char **argv) {
        unsigned count = 0;

        if (argc < 2) {
                fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
                return 2;
        }
        for (int i = 1; i < argc; i++)
                if (run_path(argv[i], &count) < 0)
                        return 1;
        if (count == 0) {
                fprintf(stderr, "no corpus inputs found\n");
                return 1;
        }
        printf("%u inputs replayed without failure\n", count);
        return 0;
}
