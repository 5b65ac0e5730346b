// Reads of published registers answered in native code, on the vCPU's thread, without a return
// to JavaScript (local-reads.cc; the registers and their protocol: core/kvm/register-file.ts).
#pragma once
#include "util.h"

namespace tsvmm {

struct LocalReads;

// The handle in argument i (from localReadsCreate), or nullptr when that argument is absent or undefined.
LocalReads *OptLocalReads(const Napi::CallbackInfo &info, size_t i);

// If the exit in the handle's kvm_run page is a 1-element port read of a published register whose
// size matches, with nothing the vCPU posted still unanswered and no change in flight: stores the
// value into the page, counts the answer (per register, and in the vCPU's exit count), returns true.
bool AnswerLocalRead(LocalReads *lr);

}  // namespace tsvmm
