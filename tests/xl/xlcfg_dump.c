/*
 * xlcfg_dump FILE: read FILE with libxlutil, exactly as `xl create` does
 * (the whole file in memory, then xlu_cfg_readdata), and print on stdout one
 * JSON object saying what xl sees:
 *
 *   {"rc": 0,                         xlu_cfg_readdata's result: 0 accepted
 *    "settings": [                    one entry per key, the value xl uses
 *      {"name": "memory",
 *       "op": "=",                    or "+=" (xl then refuses it as a number)
 *       "value": "512",               an atom as text, or a (nested) list
 *       "long": [0, 512],             xlu_cfg_get_long(): errno value, result
 *       "string": 0, "list": 22,      xlu_cfg_get_string(), xlu_cfg_get_list()
 *       "items": null}                for a list, xlu_cfg_get_listitem() of each
 *                                     item: its text, or null where xl's loops stop
 *    ]}
 *
 * Strings are printed byte by byte: a byte >= 0x80 or a control byte becomes
 * \u00XX, so the reader of the JSON recovers the bytes with latin-1.
 * libxlutil's own warnings and errors go to stderr, as in xl.
 *
 * libxlutil has no call that lists the keys of a config, so this walks its
 * list of settings, whose layout (XLU_Config, XLU_ConfigSetting) is copied
 * from Xen 4.17's tools/libs/util/libxlu_internal.h.  Each key found is then
 * read back through the public calls, which checks that the layout is right:
 * a mismatch exits 3 with a message instead of printing wrong values.
 *
 * Built by tests/xl/conftest.py into a temporary directory, never into the
 * working tree.
 */

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxlutil.h>

typedef struct DumpSetting { /* XLU_ConfigSetting, libxlu_internal.h */
    struct DumpSetting *next;
    char *name;
    XLU_ConfigValue *value;
    enum XLU_Operation op;
    int lineno;
} DumpSetting;

struct DumpConfig { /* struct XLU_Config, libxlu_internal.h */
    DumpSetting *settings;
    FILE *report;
    char *config_source;
};

static void put_string(const char *s)
{
    const unsigned char *p;

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

static void put_value(const XLU_Config *cfg, XLU_ConfigValue *value)
{
    char *s;
    XLU_ConfigList *list;
    XLU_ConfigValue *item;
    int i;

    if (xlu_cfg_value_type(value) == XLU_STRING) {
        if (xlu_cfg_value_get_string(cfg, value, &s, 1)) {
            fprintf(stderr, "xlcfg_dump: an atom is not a string\n");
            exit(3);
        }
        put_string(s);
        return;
    }
    if (xlu_cfg_value_get_list(cfg, value, &list, 1)) {
        fprintf(stderr, "xlcfg_dump: a list is not a list\n");
        exit(3);
    }
    putchar('[');
    for (i = 0; (item = xlu_cfg_get_listitem2(list, i)) != NULL; i++) {
        if (i)
            putchar(',');
        put_value(cfg, item);
    }
    putchar(']');
}

/* The newest setting of NAME, as libxlutil's find() returns it. */
static int is_newest(const struct DumpConfig *cfg, const DumpSetting *set)
{
    const DumpSetting *other;

    for (other = cfg->settings; other != set; other = other->next)
        if (!strcmp(other->name, set->name))
            return 0;
    return 1;
}

static void put_setting(XLU_Config *cfg, const DumpSetting *set)
{
    const char *atom = NULL;
    XLU_ConfigList *list = NULL;
    const char *item;
    long number = 0;
    int rc_string, rc_list, rc_long, i;

    /* The public calls must find what the walk found. */
    rc_string = xlu_cfg_get_string(cfg, set->name, &atom, 1);
    rc_list = xlu_cfg_get_list(cfg, set->name, &list, NULL, 1);
    if ((rc_string != 0) == (rc_list != 0) ||
        (rc_string == 0 && xlu_cfg_value_type(set->value) != XLU_STRING) ||
        (rc_list == 0 && xlu_cfg_value_type(set->value) != XLU_LIST)) {
        fprintf(stderr, "xlcfg_dump: libxlutil's settings layout is not "
                "Xen 4.17's: key %s not found by the public calls\n", set->name);
        exit(3);
    }
    rc_long = xlu_cfg_get_long(cfg, set->name, &number, 1);

    printf("{\"name\":");
    put_string(set->name);
    printf(",\"op\":\"%s\",\"line\":%d,\"value\":",
           set->op == XLU_OP_ADDITION ? "+=" : "=", set->lineno);
    put_value(cfg, set->value);
    printf(",\"long\":[%d,%ld],\"string\":%d,\"list\":%d,\"items\":",
           rc_long, rc_long ? 0L : number, rc_string, rc_list);
    if (rc_list) {
        printf("null}");
        return;
    }
    putchar('[');
    for (i = 0; xlu_cfg_get_listitem2(list, i); i++) {
        if (i)
            putchar(',');
        item = xlu_cfg_get_listitem(list, i);
        if (item)
            put_string(item);
        else
            printf("null");
    }
    printf("]}");
}

static char *slurp(const char *path, int *length)
{
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    size_t size = 0, used = 0, got;

    if (!f) {
        perror(path);
        exit(2);
    }
    do {
        if (used == size) {
            size = size ? size * 2 : 65536;
            if (size > INT_MAX || !(data = realloc(data, size))) {
                fprintf(stderr, "xlcfg_dump: %s is too large\n", path);
                exit(2);
            }
        }
        got = fread(data + used, 1, size - used, f);
        used += got;
    } while (got);
    if (ferror(f)) {
        perror(path);
        exit(2);
    }
    fclose(f);
    *length = (int)used;
    return data;
}

int main(int argc, char **argv)
{
    XLU_Config *cfg;
    const DumpSetting *set;
    char *data;
    int length, rc, first = 1;

    if (argc != 2) {
        fprintf(stderr, "usage: xlcfg_dump FILE\n");
        return 2;
    }
    data = slurp(argv[1], &length);
    cfg = xlu_cfg_init(stderr, argv[1]);
    if (!cfg) {
        perror("xlu_cfg_init");
        return 2;
    }
    rc = xlu_cfg_readdata(cfg, data, length);
    printf("{\"rc\":%d,\"settings\":[", rc);
    /* After a failed read libxlutil says its settings must not be used. */
    for (set = rc ? NULL : ((struct DumpConfig *)cfg)->settings; set; set = set->next) {
        if (!is_newest((struct DumpConfig *)cfg, set))
            continue;
        if (!first)
            putchar(',');
        first = 0;
        put_setting(cfg, set);
    }
    printf("]}\n");
    xlu_cfg_destroy(cfg);
    free(data);
    return 0;
}
