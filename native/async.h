// Runs work off the JavaScript thread and settles a Promise with the result.
// `execute` runs on a libuv worker thread and must not touch JavaScript values;
// `resolve` runs back on the JavaScript thread and builds the result. Whatever
// `execute` needs (storages, params) is captured by value, so it lives until the
// work ends even if the JavaScript objects are disposed meanwhile.
#pragma once

#include <napi.h>

#include <functional>
#include <optional>

#include "native/errors.h"

namespace moekit::native {

class Job : public Napi::AsyncWorker {
 public:
  using Execute_ = std::function<void()>;
  using Resolve_ = std::function<Napi::Value(Napi::Env)>;

  static Napi::Promise start(Napi::Env env, const char* name, Execute_ execute, Resolve_ resolve) {
    auto* job = new Job(env, name, std::move(execute), std::move(resolve));
    Napi::Promise promise = job->deferred_.Promise();
    job->Queue();  // the worker deletes itself after OnOK
    return promise;
  }

 protected:
  void Execute() override {
    try {
      execute_();
    } catch (...) {
      error_ = current_exception_as_error();
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    // NOTE: nothing may escape this callback: an exception here would surface as an
    // uncaught error (or std::terminate) with the Promise never settled.
    try {
      if (error_) {
        deferred_.Reject(make_error(env, *error_));
        return;
      }
      try {
        deferred_.Resolve(resolve_(env));
      } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
      } catch (...) {
        deferred_.Reject(make_error(env, current_exception_as_error()));
      }
    } catch (...) {
      reject_last_resort(env);
    }
  }

  // Rejection that allocates as little as possible, for when building a MoekitError failed.
  void reject_last_resort(Napi::Env env) noexcept {
    napi_value message = nullptr;
    napi_value error = nullptr;
    if (napi_create_string_utf8(env, "moekit: internal error while settling a Promise", NAPI_AUTO_LENGTH, &message) == napi_ok &&
        napi_create_error(env, nullptr, message, &error) == napi_ok) {
      try {
        deferred_.Reject(Napi::Value(env, error));
      } catch (...) {
        // The environment is going away; nothing is left to tell.
      }
    }
  }

 private:
  Job(Napi::Env env, const char* name, Execute_ execute, Resolve_ resolve)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)),
        execute_(std::move(execute)), resolve_(std::move(resolve)) {}

  Napi::Promise::Deferred deferred_;
  Execute_ execute_;
  Resolve_ resolve_;
  std::optional<moekit::Error> error_;
};

}  // namespace moekit::native
