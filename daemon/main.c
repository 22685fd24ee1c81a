/* SPDX-License-Identifier: Apache-2.0 */
#include <stdio.h>
#include <stdlib.h>

#include "build-config.h"
#include "config.h"

int main(int argc, char **argv) {
        struct gemma4d_config cfg;
        if (config_init_defaults(&cfg) < 0)
                return EXIT_FAILURE;
        printf("gemma4d %s\n", GEMMA4D_VERSION);
        config_done(&cfg);
        return EXIT_SUCCESS;
}
