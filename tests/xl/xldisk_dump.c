/*
 * xldisk_dump: read disk specs (xl-disk-configuration(5)) on stdin, each ended
 * by a NUL byte, parse each one alone with libxlutil's xlu_disk_parse, exactly
 * as xl does for one item of `disk = [ ... ]`, and print one JSON object a line
 * saying what xl gets:
 *
 *   {"rc": 0,                         xlu_disk_parse's result: 0 accepted
 *    "error": "...",                  what libxlutil reported, "" if nothing
 *    "pdev_path": "/img" | null,      the target
 *    "vdev": "xvda" | null,
 *    "format": "raw",                 libxl_disk_format_to_string, lower case
 *    "backend": "unknown",            libxl_disk_backend_to_string, lower case
 *    "specification": "unknown",
 *    "readwrite": 1, "is_cdrom": 0, "removable": 0,
 *    "script": null, "backend_domname": null,
 *    "direct_io_safe": 0,
 *    "discard": 0, "colo": 0, "trusted": 0,     libxl_defbool: 0 default,
 *                                               > 0 true, < 0 false
 *    "colo_host": null, "colo_port": 0, "colo_export": null,
 *    "active_disk": null, "hidden_disk": null}
 *
 * When the lexer's scanner jams (a stray character just before a newline:
 * flex prints "flex scanner jammed" and exits, so xl dies), the line is
 * {"rc": -1, "error": "jammed"}: each spec is parsed in a child process.
 *
 * Strings are printed byte by byte: a byte >= 0x80 or a control byte becomes
 * \u00XX, so the reader of the JSON recovers the bytes with latin-1.  After a
 * refusal the fields hold whatever the lexer had set: only rc means anything.
 *
 * Built by tests/xl/conftest.py into a temporary directory, never into the
 * working tree.
 */

#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libxlutil.h>

static void put_string(const char *s)
{
    const unsigned char *p;

    if (!s) {
        printf("null");
        return;
    }
    putchar('"');
    for (p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20 || *p >= 0x7f)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void put_name(const char *key, const char *name)
{
    char lower[64];
    size_t i;

    for (i = 0; name && name[i] && i < sizeof(lower) - 1; i++)
        lower[i] = (char)tolower((unsigned char)name[i]);
    lower[i] = 0;
    printf(",\"%s\":", key);
    put_string(name ? lower : NULL);
}

static void dump(const char *spec)
{
    libxl_device_disk disk;
    XLU_Config *cfg;
    FILE *report;
    char *reported = NULL;
    size_t reported_size = 0;
    int rc;

    report = open_memstream(&reported, &reported_size);
    if (!report) {
        perror("open_memstream");
        exit(2);
    }
    cfg = xlu_cfg_init(report, "spec");
    if (!cfg) {
        perror("xlu_cfg_init");
        exit(2);
    }
    libxl_device_disk_init(&disk);
    rc = xlu_disk_parse(cfg, 1, &spec, &disk);
    fclose(report);

    printf("{\"rc\":%d,\"error\":", rc);
    put_string(reported);
    printf(",\"pdev_path\":");
    put_string(disk.pdev_path);
    printf(",\"vdev\":");
    put_string(disk.vdev);
    put_name("format", libxl_disk_format_to_string(disk.format));
    put_name("backend", libxl_disk_backend_to_string(disk.backend));
    put_name("specification",
             libxl_disk_specification_to_string(disk.specification));
    printf(",\"readwrite\":%d,\"is_cdrom\":%d,\"removable\":%d,\"script\":",
           disk.readwrite, disk.is_cdrom, disk.removable);
    put_string(disk.script);
    printf(",\"backend_domname\":");
    put_string(disk.backend_domname);
    printf(",\"direct_io_safe\":%d,\"discard\":%d,\"colo\":%d,\"trusted\":%d",
           disk.direct_io_safe, disk.discard_enable.val, disk.colo_enable.val,
           disk.trusted.val);
    printf(",\"colo_host\":");
    put_string(disk.colo_host);
    printf(",\"colo_port\":%d,\"colo_export\":", disk.colo_port);
    put_string(disk.colo_export);
    printf(",\"active_disk\":");
    put_string(disk.active_disk);
    printf(",\"hidden_disk\":");
    put_string(disk.hidden_disk);
    printf("}\n");

    libxl_device_disk_dispose(&disk);
    xlu_cfg_destroy(cfg);
    free(reported);
}

int main(void)
{
    char *spec = NULL;
    size_t size = 0;
    ssize_t got;
    pid_t pid;
    int status;

    while ((got = getdelim(&spec, &size, '\0', stdin)) > 0) {
        if (spec[got - 1] != '\0') {
            fprintf(stderr, "xldisk_dump: the last spec has no NUL after it\n");
            return 2;
        }
        fflush(stdout);
        pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            dump(spec);
            fflush(stdout);
            _exit(0);
        }
        if (waitpid(pid, &status, 0) != pid) {
            perror("waitpid");
            return 2;
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status))
            printf("{\"rc\":-1,\"error\":\"jammed\"}\n");
    }
    free(spec);
    return ferror(stdin) ? 2 : 0;
}
