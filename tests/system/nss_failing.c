/* A tiny NSS module that fails, built by the test setup.
 *
 * Compiled three times:
 *   -DMODULE=qdunavail -DSTATUS=NSS_STATUS_UNAVAIL -DERR=EIO: a backend that is down, like an
 *     unreachable LDAP server, for every name and uid the files do not have;
 *   -DMODULE=qdagain -DSTATUS=NSS_STATUS_TRYAGAIN -DERR=EAGAIN: one that answers "try again";
 *   -DMODULE=qdsel -DSTATUS=NSS_STATUS_UNAVAIL -DERR=EIO -DSELECTIVE: one that fails only for
 *     the user names in $QDNSS_FAIL and the uids in $QDNSS_FAIL_UID (comma-separated), or, with
 *     $QDNSS_FLAP set, on every other call; otherwise it answers "not found".  It never answers
 *     for the uids in $QDNSS_HANG_UID (a directory that hangs), and with $QDNSS_LOG set it
 *     appends "name NAME" or "uid UID" to that file for every call, so that tests can count
 *     what reached it.
 * Listed after "files" in a scratch nsswitch.conf. */
#include <errno.h>
#include <grp.h>
#include <nss.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(CAT(_nss_, MODULE), CAT(_, name))

#ifdef SELECTIVE
static unsigned long calls;

static int listed(const char *variable, const char *key)
{
    const char *list = getenv(variable);
    size_t length = strlen(key);
    while (list && *list) {
        const char *end = strchr(list, ',');
        size_t item = end ? (size_t)(end - list) : strlen(list);
        if (item == length && strncmp(list, key, length) == 0)
            return 1;
        list = end ? end + 1 : NULL;
    }
    return 0;
}

static void record(const char *kind, const char *key)
{
    const char *path = getenv("QDNSS_LOG");
    FILE *log = path ? fopen(path, "a") : NULL;
    if (log) {
        fprintf(log, "%s %s\n", kind, key);
        fclose(log);
    }
}

static enum nss_status answer(int fail, int *e)
{
    if (getenv("QDNSS_FLAP"))
        fail = (calls++ % 2) == 0;
    if (fail) {
        *e = ERR;
        return STATUS;
    }
    *e = ENOENT;
    return NSS_STATUS_NOTFOUND;
}
#define ANSWER_NAME(n) (record("name", n), answer(listed("QDNSS_FAIL", n), e))
#define ANSWER_UID(u) \
    do { char key[16]; snprintf(key, sizeof key, "%u", (unsigned)(u)); \
         record("uid", key); \
         while (listed("QDNSS_HANG_UID", key)) \
             pause(); \
         return answer(listed("QDNSS_FAIL_UID", key), e); } while (0)
#else
#define ANSWER_NAME(n) ((void)(n), *e = ERR, STATUS)
#define ANSWER_UID(u) do { (void)(u); *e = ERR; return STATUS; } while (0)
#endif

enum nss_status FN(getpwnam_r)(const char *n, struct passwd *p, char *b, size_t l, int *e)
{
    (void)p; (void)b; (void)l;
    return ANSWER_NAME(n);
}

enum nss_status FN(getpwuid_r)(uid_t u, struct passwd *p, char *b, size_t l, int *e)
{
    (void)p; (void)b; (void)l;
    ANSWER_UID(u);
}

enum nss_status FN(getgrnam_r)(const char *n, struct group *g, char *b, size_t l, int *e)
{
    (void)n; (void)g; (void)b; (void)l;
    *e = ENOENT;
    return NSS_STATUS_NOTFOUND;
}

enum nss_status FN(getgrgid_r)(gid_t i, struct group *g, char *b, size_t l, int *e)
{
    (void)i; (void)g; (void)b; (void)l;
    *e = ENOENT;
    return NSS_STATUS_NOTFOUND;
}
