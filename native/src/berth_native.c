/*
 * The system calls Node cannot make itself: setns(2) around a synchronous callback (so a netlink
 * socket or a /proc/sys file can be opened inside a pod's network namespace), the type of a namespace
 * file (ioctl NS_GET_NSTYPE), flock(2) (so our
 * lease-file lock interoperates with Go host-local's go-filemutex), and syncfs(2) off the main thread
 * (berthd's group commit: one call makes a whole round of lease files durable), and SO_PEERCRED (berthd
 * serves plugin calls to root callers only), the read of every small file of a directory in one call
 * (berth-ipam's take-over of a host-local lease directory), and one acknowledged netlink request on a pool
 * thread (a veth's deletion keeps the sending thread in the kernel for ~20 ms).
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <linux/netlink.h>
#include <sys/stat.h>
#include <unistd.h>
#include <node_api.h>

static const char *errno_name(int e) {
  switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EINTR: return "EINTR";
    case ENOLCK: return "ENOLCK";
    case EWOULDBLOCK: return "EWOULDBLOCK";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case EUSERS: return "EUSERS";
    case ENOSYS: return "ENOSYS";
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EROFS: return "EROFS";
    case EDQUOT: return "EDQUOT";
    case ENOTTY: return "ENOTTY";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EMSGSIZE: return "EMSGSIZE";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOBUFS: return "ENOBUFS";
    case ECONNREFUSED: return "ECONNREFUSED";
    default: return "EUNKNOWN";
  }
}

/* A Node-style system error: message "<syscall> <CODE>: <strerror>", code, errno, syscall. */
static napi_value errno_error(napi_env env, int e, const char *syscall) {
  char msg[256];
  const char *name = errno_name(e);
  snprintf(msg, sizeof msg, "%s %s: %s", syscall, name, strerror(e));
  napi_value code, text, err, v;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &err);
  napi_create_int32(env, -e, &v); /* Node convention: errno is negative (uv style) */
  napi_set_named_property(env, err, "errno", v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, err, "syscall", v);
  return err;
}

static void throw_errno(napi_env env, int e, const char *syscall) {
  napi_throw(env, errno_error(env, e, syscall));
}

static int get_fd(napi_env env, napi_value v, int32_t *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_number) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "fd must be a number");
    return 0;
  }
  napi_get_value_int32(env, v, out);
  if (*out < 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd must be >= 0");
    return 0;
  }
  return 1;
}

/*
 * The arguments of a call whose first argument is a file descriptor: up to `max` into argv, at least `needed`
 * of them (else ERR_MISSING_ARGS with `usage`), the first a valid fd. 0 with an exception pending otherwise.
 */
static int fd_args(napi_env env, napi_callback_info info, napi_value *argv, size_t max, size_t needed, int32_t *fd,
                   const char *usage) {
  size_t argc = max;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < needed) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", usage);
    return 0;
  }
  return get_fd(env, argv[0], fd);
}

/*
 * setnsRun(fd, fn): enter the network namespace `fd`, call fn() synchronously, switch back to the
 * namespace we were in, return fn's value or rethrow its exception. Nothing else of the event loop
 * can run in between, which is what makes this safe on Node's main thread.
 */
static napi_value setns_run(napi_env env, napi_callback_info info) {
  napi_value argv[2], undefined, result = NULL;
  int32_t target;
  if (!fd_args(env, info, argv, 2, 2, &target, "setnsRun(fd, fn) needs two arguments")) return NULL;
  napi_get_undefined(env, &undefined);
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "fn must be a function");
    return NULL;
  }

  int orig = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (orig < 0) {
    throw_errno(env, errno, "open");
    return NULL;
  }
  if (setns(target, CLONE_NEWNET) != 0) {
    int e = errno;
    close(orig);
    throw_errno(env, e, "setns");
    return NULL;
  }

  napi_status st = napi_call_function(env, undefined, argv[1], 0, NULL, &result);

  if (setns(orig, CLONE_NEWNET) != 0) {
    /* Continuing would run the rest of the process in the pod's namespace: refuse. */
    fprintf(stderr, "berth_native: setns back to the original network namespace failed: %s\n",
            strerror(errno));
    abort();
  }
  close(orig);
  if (st != napi_ok) return NULL; /* the pending exception propagates to the caller */
  return result;
}

/* peerCredentials(fd): { pid, uid, gid } of the process at the other end of a unix socket (SO_PEERCRED). */
static napi_value peer_credentials(napi_env env, napi_callback_info info) {
  napi_value argv[1], ret, v;
  int32_t fd;
  if (!fd_args(env, info, argv, 1, 1, &fd, "peerCredentials(fd) needs fd")) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    throw_errno(env, errno, "getsockopt");
    return NULL;
  }
  napi_create_object(env, &ret);
  napi_create_int32(env, (int32_t)cred.pid, &v);
  napi_set_named_property(env, ret, "pid", v);
  napi_create_uint32(env, (uint32_t)cred.uid, &v);
  napi_set_named_property(env, ret, "uid", v);
  napi_create_uint32(env, (uint32_t)cred.gid, &v);
  napi_set_named_property(env, ret, "gid", v);
  return ret;
}

/* flock(fd, mode, nonBlocking): mode 'ex' | 'sh' | 'un'; returns false when a non-blocking lock is busy. */
static napi_value flock_fn(napi_env env, napi_callback_info info) {
  napi_value argv[3], ret;
  int32_t fd;
  if (!fd_args(env, info, argv, 3, 2, &fd, "flock(fd, mode, nonBlocking?) needs fd and mode")) return NULL;
  char mode[4] = {0};
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[1], mode, sizeof mode, &len) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "mode must be 'ex', 'sh' or 'un'");
    return NULL;
  }
  int op;
  if (strcmp(mode, "ex") == 0) op = LOCK_EX;
  else if (strcmp(mode, "sh") == 0) op = LOCK_SH;
  else if (strcmp(mode, "un") == 0) op = LOCK_UN;
  else {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "mode must be 'ex', 'sh' or 'un'");
    return NULL;
  }
  /* N-API passes undefined for an argument not given. */
  bool nb = false;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t == napi_boolean) napi_get_value_bool(env, argv[2], &nb);
  if (nb) op |= LOCK_NB;
  int r;
  do {
    r = flock(fd, op);
  } while (r != 0 && errno == EINTR);
  if (r != 0) {
    if (errno == EWOULDBLOCK) {
      napi_get_boolean(env, false, &ret);
      return ret;
    }
    throw_errno(env, errno, "flock");
    return NULL;
  }
  napi_get_boolean(env, true, &ret);
  return ret;
}

/*
 * Runs `execute` on a libuv pool thread for `job` and returns the promise that `complete` settles (through
 * *deferred) and frees the job in. A job that cannot be created or queued would leave its promise pending
 * forever: it is rejected at once instead and the job handed to `discard`. NULL, with an exception pending,
 * only when no promise could be made.
 */
static napi_value start_pool_job(napi_env env, const char *what, napi_async_execute_callback execute,
                                 napi_async_complete_callback complete, void *job, napi_deferred *deferred,
                                 napi_async_work *work, void (*discard)(void *)) {
  napi_value promise, name;
  char label[64];
  if (napi_create_promise(env, deferred, &promise) != napi_ok) {
    discard(job);
    napi_throw_error(env, "ERR_NAPI", "cannot create a promise");
    return NULL;
  }
  snprintf(label, sizeof label, "berth.%s", what);
  if (napi_create_string_utf8(env, label, NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, execute, complete, job, work) != napi_ok) {
    napi_reject_deferred(env, *deferred, errno_error(env, ENOMEM, what));
    discard(job);
    return promise;
  }
  if (napi_queue_async_work(env, *work) != napi_ok) {
    napi_reject_deferred(env, *deferred, errno_error(env, ENOMEM, what));
    napi_delete_async_work(env, *work);
    discard(job);
  }
  return promise;
}

/* syncfs(fd) on a libuv pool thread; resolves the promise when the filesystem of fd is on disk. */
typedef struct {
  int fd;
  int err;
  napi_async_work work;
  napi_deferred deferred;
} syncfs_job;

static void syncfs_execute(napi_env env, void *data) {
  (void)env;
  syncfs_job *job = data;
  job->err = syncfs(job->fd) == 0 ? 0 : errno;
}

static void syncfs_complete(napi_env env, napi_status status, void *data) {
  syncfs_job *job = data;
  napi_value v;
  if (status == napi_ok && job->err == 0) {
    napi_get_undefined(env, &v);
    napi_resolve_deferred(env, job->deferred, v);
  } else {
    napi_reject_deferred(env, job->deferred, errno_error(env, job->err != 0 ? job->err : EINTR, "syncfs"));
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value syncfs_fn(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!fd_args(env, info, argv, 1, 1, &fd, "syncfs(fd) needs fd")) return NULL;
  syncfs_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    throw_errno(env, ENOMEM, "syncfs");
    return NULL;
  }
  job->fd = fd;
  return start_pool_job(env, "syncfs", syncfs_execute, syncfs_complete, job, &job->deferred, &job->work, free);
}

/* From <linux/nsfs.h> (Linux 4.11); defined here so the addon builds against older headers too. */
#ifndef NS_GET_NSTYPE
#define NS_GET_NSTYPE _IO(0xb7, 0x3)
#endif

/*
 * nsType(fd): the CLONE_NEW* flag of the namespace open on fd (ioctl NS_GET_NSTYPE), so a path can be
 * checked to be a network namespace before anything uses it; ENOTTY when fd is no namespace at all.
 */
static napi_value ns_type(napi_env env, napi_callback_info info) {
  napi_value argv[1], ret;
  int32_t fd;
  if (!fd_args(env, info, argv, 1, 1, &fd, "nsType(fd) needs fd")) return NULL;
  int t = ioctl(fd, NS_GET_NSTYPE);
  if (t < 0) {
    throw_errno(env, errno, "ioctl");
    return NULL;
  }
  napi_create_int32(env, t, &ret);
  return ret;
}

/*
 * readSmallFiles(dir): every entry of a directory ('.' and '..' aside) with the first 4096 bytes of each
 * regular file, in one Buffer, so a scan of tens of thousands of lease files costs one call instead of an
 * open, a read and a close from JavaScript per file. Each entry: u8 kind (0: read, 1: not a regular file,
 * 2: open or read failed), u16 name length, u16 content length (kind 0) or u16 errno (kind 2), then the name
 * and the content. Files are opened relative to the directory, O_NOFOLLOW | O_NONBLOCK (never a symlink
 * followed, never a wait on a FIFO). Throws (open/readdir errors) only for the directory itself.
 */
struct outbuf {
  char *p;
  size_t len, cap;
};

static int out_put(struct outbuf *o, const void *data, size_t n) {
  if (o->len + n > o->cap) {
    size_t cap = o->cap ? o->cap : 1 << 20;
    while (cap < o->len + n) cap *= 2;
    char *p = realloc(o->p, cap);
    if (p == NULL) return 0;
    o->p = p;
    o->cap = cap;
  }
  memcpy(o->p + o->len, data, n);
  o->len += n;
  return 1;
}

static int out_entry(struct outbuf *o, uint8_t kind, const char *name, size_t name_len, uint16_t extra,
                     const char *content, size_t content_len) {
  uint8_t head[5] = {kind, (uint8_t)(name_len & 0xff), (uint8_t)(name_len >> 8), (uint8_t)(extra & 0xff),
                     (uint8_t)(extra >> 8)};
  return out_put(o, head, 5) && out_put(o, name, name_len) && out_put(o, content, content_len);
}

static napi_value read_small_files(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], ret;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[4096];
  size_t plen;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], path, sizeof path, &plen) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "readSmallFiles(dir) needs a path");
    return NULL;
  }
  int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    throw_errno(env, errno, "open");
    return NULL;
  }
  DIR *d = fdopendir(dfd);
  if (d == NULL) {
    int e = errno;
    close(dfd);
    throw_errno(env, e, "fdopendir");
    return NULL;
  }
  struct outbuf o = {NULL, 0, 0};
  char content[4096];
  int fail = 0, nomem = 0;
  for (;;) {
    errno = 0;
    struct dirent *e = readdir(d);
    if (e == NULL) {
      fail = errno;
      break;
    }
    const char *name = e->d_name;
    if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
    size_t nlen = strlen(name);
    int ok;
    unsigned char type = e->d_type;
    if (type == DT_UNKNOWN) {
      // statx (glibc 2.28, as Node 20 itself needs), not fstatat: built against glibc >= 2.33, fstatat
      // binds to that version's new symbol and the addon would not load on older hosts (RHEL 8, Ubuntu 20.04).
      struct statx stx;
      if (statx(dfd, name, AT_SYMLINK_NOFOLLOW, STATX_TYPE, &stx) == 0)
        type = S_ISREG(stx.stx_mode) ? DT_REG : DT_FIFO;
    }
    if (type != DT_REG) {
      ok = out_entry(&o, 1, name, nlen, 0, NULL, 0);
    } else {
      int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
      ssize_t r = -1;
      int err = 0;
      if (fd < 0) err = errno;
      else {
        do r = read(fd, content, sizeof content);
        while (r < 0 && errno == EINTR);
        if (r < 0) err = errno;
        close(fd);
      }
      ok = err ? out_entry(&o, 2, name, nlen, (uint16_t)err, NULL, 0)
               : out_entry(&o, 0, name, nlen, (uint16_t)r, content, (size_t)r);
    }
    if (!ok) {
      nomem = 1;
      break;
    }
  }
  closedir(d);
  if (nomem || fail) {
    free(o.p);
    throw_errno(env, nomem ? ENOMEM : fail, "readdir");
    return NULL;
  }
  void *data;
  napi_status st = napi_create_buffer_copy(env, o.len, o.p ? o.p : "", &data, &ret);
  free(o.p);
  if (st != napi_ok) {
    napi_throw_error(env, NULL, "readSmallFiles: cannot create the buffer");
    return NULL;
  }
  return ret;
}

/*
 * netlinkOpen(protocol): a plain AF_NETLINK socket (close-on-exec, port chosen by the kernel) for
 * netlinkRequest. Opened inside setnsRun it belongs to that namespace, like any socket. Closed by the
 * caller (fs.closeSync) once no request is in flight on it.
 */
static napi_value netlink_open(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], ret;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t protocol;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &protocol) != napi_ok || protocol < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "netlinkOpen(protocol) needs a protocol number");
    return NULL;
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
  if (fd < 0) {
    throw_errno(env, errno, "socket");
    return NULL;
  }
  struct sockaddr_nl local = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&local, sizeof local) != 0) {
    int e = errno;
    close(fd);
    throw_errno(env, e, "bind");
    return NULL;
  }
  napi_create_int32(env, fd, &ret);
  return ret;
}

/*
 * netlinkRequest(fd, message, timeoutMs): sends one netlink message (header included, NLM_F_ACK set by the
 * caller) on a libuv pool thread and waits there for its acknowledgement (the NLMSG_ERROR with the same
 * sequence number); resolves with its error field (0, or a negative errno). The kernel does the work of an
 * rtnetlink request inside sendmsg, in the sender's thread: for a veth's deletion ~20 ms (RCU grace periods),
 * which on Node's main thread would stop every other call berthd is serving, and would serialise deletions
 * that the kernel can partly overlap. Replies of other sequence numbers (one that timed out before) are
 * skipped. Only for requests answered by an acknowledgement alone: no dumps, no NLM_F_ECHO.
 */
#define NETLINK_REPLY_BUFFER 65536

typedef struct {
  int fd;
  int timeout_ms;
  uint32_t seq;
  void *message;
  size_t length;
  int kernel_error; /* the acknowledgement's error field */
  int err;          /* our own failure (errno), 0 if the acknowledgement came */
  const char *syscall;
  napi_async_work work;
  napi_deferred deferred;
} netlink_job;

static void netlink_execute(napi_env env, void *data) {
  (void)env;
  netlink_job *job = data;
  struct timeval tv = {.tv_sec = job->timeout_ms / 1000, .tv_usec = (job->timeout_ms % 1000) * 1000};
  if (setsockopt(job->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
    job->err = errno;
    job->syscall = "setsockopt";
    return;
  }
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  ssize_t n;
  do {
    n = sendto(job->fd, job->message, job->length, 0, (struct sockaddr *)&kernel, sizeof kernel);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    job->err = errno;
    job->syscall = "sendmsg";
    return;
  }
  char *buf = malloc(NETLINK_REPLY_BUFFER);
  if (buf == NULL) {
    job->err = ENOMEM;
    job->syscall = "recv";
    return;
  }
  for (;;) {
    do {
      n = recv(job->fd, buf, NETLINK_REPLY_BUFFER, MSG_TRUNC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      job->err = (errno == EAGAIN || errno == EWOULDBLOCK) ? ETIMEDOUT : errno;
      job->syscall = "recv";
      break;
    }
    if (n > NETLINK_REPLY_BUFFER) {
      job->err = EMSGSIZE;
      job->syscall = "recv";
      break;
    }
    int left = (int)n;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_seq != job->seq || h->nlmsg_type != NLMSG_ERROR) continue;
      if (h->nlmsg_len < NLMSG_LENGTH(sizeof(int))) {
        job->err = EMSGSIZE;
        job->syscall = "recv";
      } else {
        memcpy(&job->kernel_error, NLMSG_DATA(h), sizeof(int));
      }
      free(buf);
      return;
    }
  }
  free(buf);
}

static void netlink_job_free(void *data) {
  netlink_job *job = data;
  free(job->message);
  free(job);
}

static void netlink_complete(napi_env env, napi_status status, void *data) {
  netlink_job *job = data;
  napi_value v;
  if (status == napi_ok && job->err == 0) {
    napi_create_int32(env, job->kernel_error, &v);
    napi_resolve_deferred(env, job->deferred, v);
  } else {
    napi_reject_deferred(env, job->deferred,
                         errno_error(env, job->err != 0 ? job->err : EINTR, job->syscall ? job->syscall : "netlink"));
  }
  napi_delete_async_work(env, job->work);
  netlink_job_free(job);
}

static napi_value netlink_request(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd, timeout_ms;
  if (!fd_args(env, info, argv, 3, 3, &fd, "netlinkRequest(fd, message, timeoutMs) needs three arguments")) return NULL;
  bool is_buffer = false;
  napi_is_buffer(env, argv[1], &is_buffer);
  void *bytes = NULL;
  size_t length = 0;
  if (!is_buffer || napi_get_buffer_info(env, argv[1], &bytes, &length) != napi_ok ||
      length < sizeof(struct nlmsghdr)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "message must be a Buffer holding a netlink message");
    return NULL;
  }
  if (napi_get_value_int32(env, argv[2], &timeout_ms) != napi_ok || timeout_ms <= 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "timeoutMs must be a positive number");
    return NULL;
  }
  netlink_job *job = calloc(1, sizeof *job);
  void *copy = malloc(length);
  if (job == NULL || copy == NULL) {
    free(job);
    free(copy);
    throw_errno(env, ENOMEM, "netlinkRequest");
    return NULL;
  }
  /* Copied: the JavaScript buffer may be reused or collected while the pool thread sends it. */
  memcpy(copy, bytes, length);
  job->fd = fd;
  job->timeout_ms = timeout_ms;
  job->message = copy;
  job->length = length;
  job->seq = ((struct nlmsghdr *)copy)->nlmsg_seq;
  return start_pool_job(env, "netlinkRequest", netlink_execute, netlink_complete, job, &job->deferred, &job->work,
                        netlink_job_free);
}

/*
 * bootTimeMs(): CLOCK_BOOTTIME in milliseconds. Monotonic like CLOCK_MONOTONIC (performance.now()), but it
 * also counts the time the machine was suspended, which an age that decides ownership must not miss.
 */
static napi_value boot_time_ms(napi_env env, napi_callback_info info) {
  (void)info;
  struct timespec ts;
  if (clock_gettime(CLOCK_BOOTTIME, &ts) != 0) return errno_error(env, errno, "clock_gettime");
  napi_value ret;
  napi_create_double(env, (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6, &ret);
  return ret;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"setnsRun", NULL, setns_run, NULL, NULL, NULL, napi_enumerable, NULL},
    {"flock", NULL, flock_fn, NULL, NULL, NULL, napi_enumerable, NULL},
    {"syncfs", NULL, syncfs_fn, NULL, NULL, NULL, napi_enumerable, NULL},
    {"nsType", NULL, ns_type, NULL, NULL, NULL, napi_enumerable, NULL},
    {"peerCredentials", NULL, peer_credentials, NULL, NULL, NULL, napi_enumerable, NULL},
    {"readSmallFiles", NULL, read_small_files, NULL, NULL, NULL, napi_enumerable, NULL},
    {"netlinkOpen", NULL, netlink_open, NULL, NULL, NULL, napi_enumerable, NULL},
    {"netlinkRequest", NULL, netlink_request, NULL, NULL, NULL, napi_enumerable, NULL},
    {"bootTimeMs", NULL, boot_time_ms, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
